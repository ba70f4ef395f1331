"""Structure-prediction backends behind one small protocol (see :mod:`model.base`)."""

from model.base import ModelBackend, Prediction, PredictionFailure, ModelInfo

__all__ = ["ModelBackend", "ModelInfo", "Prediction", "PredictionFailure"]
