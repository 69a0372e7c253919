"""The combined predictor as an MLflow pyfunc model, so ``mlflow.pyfunc.load_model(uri)`` works
too: ``predict`` takes a DataFrame with a ``path`` column and returns one row per image in facray's
output schema (:func:`model_signature`: the face columns, ``error``, 40 ``<Attribute>_prob`` and
40 decisions); the registered model carries that signature and an input example. facray itself loads the same
artifacts directly with :func:`facray.predictors.networks.load_predictor`."""
from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from facray.labelling.batch import label_batch, preprocessing_for
from facray.labelling.output import OUTPUT_COLUMNS


class FacrayPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from facray.predictors.networks import load_predictor  # lazy: torch loads in the model server only
        self.predictor = load_predictor(context.artifacts["predictor"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        chain = preprocessing_for(self.predictor.manifest)
        batch = {"path": model_input["path"].astype(str).to_numpy(dtype=object)}
        return pd.DataFrame(label_batch(chain(batch), self.predictor))


def model_signature():
    """The pyfunc's MLflow signature: a ``path`` column in; per image out the columns of
    :func:`facray.labelling.batch.label_batch` (facray's output schema less ``image_id``, which needs
    the input folder)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    kinds = {"path": "string", "error": "string", "model": "string", "crop_method": "string", "face_found": "boolean",
             "n_faces": "long", "face_index": "long"}
    return ModelSignature(inputs=Schema([ColSpec("string", "path")]),
                          outputs=Schema([ColSpec(kinds.get(c, "double"), c) for c in OUTPUT_COLUMNS
                                          if c != "image_id"]))


# An input example (a path that need not exist: the row comes back with its error, never an
# exception), so MLflow records how to call the model.
INPUT_EXAMPLE = pd.DataFrame({"path": ["face.jpg"]})


# Models from code: MLflow logs this file and calls set_model when loading, so no pickle.
try:
    from mlflow.models import set_model
    set_model(FacrayPyfunc())
except ImportError:  # pragma: no cover - older MLflow
    pass
