"""The app database: engine from Settings, session scope, typed models and keyword-only crud."""

from soce.db.crud import add_scores, delete_scores, get_scores
from soce.db.engine import create_app_engine, dispose_engines, get_engine, session_scope
from soce.db.models import Base, Score

__all__ = [
    "Base",
    "Score",
    "add_scores",
    "create_app_engine",
    "delete_scores",
    "dispose_engines",
    "get_engine",
    "get_scores",
    "session_scope",
]
