"""The combined predictor as an MLflow pyfunc model, so ``mlflow.pyfunc.load_model(uri)`` works
too: ``predict`` takes a DataFrame with a ``path`` column and returns one row per image with
``face_found``, ``error`` and the 40 ``<Attribute>_prob`` columns. facray itself loads the same
artifacts directly with :func:`facray.predictor.load_predictor`."""
from __future__ import annotations

import mlflow.pyfunc
import pandas as pd


class FacrayPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from facray.predictor import load_predictor
        self.predictor = load_predictor(context.artifacts["predictor"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from facray.labelling import label_batch, preprocessing_for
        chain = preprocessing_for(self.predictor.manifest)
        batch = {"path": model_input["path"].astype(str).to_numpy(dtype=object)}
        return pd.DataFrame(label_batch(chain(batch), self.predictor))


# Models from code: MLflow logs this file and calls set_model when loading, so no pickle.
try:
    from mlflow.models import set_model
    set_model(FacrayPyfunc())
except ImportError:  # pragma: no cover - older MLflow
    pass
