"""The SoCE REST API: a FastAPI app factory; it imports no torch, lm_eval or optuna."""

from api.app import create_app

__all__ = ["create_app"]
