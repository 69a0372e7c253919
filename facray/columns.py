"""Column names of facray's batches (``dict[str, np.ndarray]`` through the ops of
:mod:`facray.data.ops`) and of the Parquet files they become (:mod:`facray.data.prepared`), in one
place. The 40 attribute columns are named as in :data:`facray.attributes.ATTRIBUTES`."""
from __future__ import annotations

PATH = "path"
IMAGE_BYTES = "image_bytes"
ERROR = "error"

IMAGE = "image"
SKETCH = "sketch"
MASKS = "masks"
LABELS = "labels"
LANDMARKS = "landmarks"
FACE_FOUND = "face_found"
CROP_METHOD = "crop_method"
# What the face-finding step saw: faces in the image (-1: not looked for: a landmark/bbox file or
# a full-image crop), the chosen face's box (x, y top-left, width, height; source pixels) and the
# detector's confidence in [0, 1] (NaN where there is none: Haar, or no detector).
N_FACES = "n_faces"
FACE_BOX = ("face_x", "face_y", "face_w", "face_h")
FACE_SCORE = "face_score"
FACE_INDEX = "face_index"  # which face of its image a row is: 0 the largest (faces="all": one row each)
VARIANT = "variant"
SPLIT = "split"
IMAGE_ID = "image_id"
ERROR_KIND = "error_kind"
