"""Search spaces as code: one module per space, exposing ``SPACE`` (keys are config field names),
``CONFIG`` (the dataclass the keys belong to), ``METRIC`` and ``MODE``."""
