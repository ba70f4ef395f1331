"""Structure-prediction backends behind one small protocol (see :mod:`model.base`)."""

from model.base import ModelBackend, ModelInfo, Prediction, PredictionFailure

__all__ = ["ModelBackend", "ModelInfo", "Prediction", "PredictionFailure"]
