"""The app database: engine from Settings, session scope, typed models and keyword-only crud."""

from soce.db.apikeys import ApiKeyError, create_api_key, list_api_keys, revoke_api_key, verify_api_key
from soce.db.crud import add_scores, delete_scores, get_scores
from soce.db.engine import create_app_engine, dispose_engines, get_engine, session_scope
from soce.db.models import (
    JOB_FINISHED_STATES,
    JOB_STATES,
    SCHEDULE_RUN_OUTCOMES,
    ApiKey,
    Base,
    Candidate,
    CandidateTag,
    Job,
    Schedule,
    ScheduleRun,
    Score,
    Soup,
    Suite,
)

__all__ = [
    "JOB_FINISHED_STATES",
    "JOB_STATES",
    "SCHEDULE_RUN_OUTCOMES",
    "ApiKey",
    "ApiKeyError",
    "Base",
    "Candidate",
    "CandidateTag",
    "Job",
    "Schedule",
    "ScheduleRun",
    "Score",
    "Soup",
    "Suite",
    "add_scores",
    "create_api_key",
    "create_app_engine",
    "delete_scores",
    "dispose_engines",
    "get_engine",
    "get_scores",
    "list_api_keys",
    "revoke_api_key",
    "session_scope",
    "verify_api_key",
]
