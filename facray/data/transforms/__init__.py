"""Image transforms, pure numpy/OpenCV, one image at a time, no Ray: used by the batch ops in
:mod:`facray.data.ops` (which Ray Data actors wrap) and tested alone. :mod:`.face` (face boxes and
crops), :mod:`.detect` (face detectors), :mod:`.sketch`, :mod:`.augment` (offline x9) and
:mod:`.masks` (AttParseNet's weak masks)."""
