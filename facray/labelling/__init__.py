"""``facray label``'s pure parts (no Ray): the config (:mod:`.config`), the inputs
(:mod:`.inputs`), per-batch labelling (:mod:`.batch`), the output format with its resume index and
atomic writes (:mod:`.output`), the lock on an output (:mod:`.lock`), what a run labels and
reuses (:mod:`.plan`) and the actor pool sizes (:mod:`.pools`). The Ray pipeline that runs them is
:mod:`facray.runners.label`."""
