"""One Settings object for the whole project, read from SOCE_* environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "soce"


class Settings(BaseSettings):
    """Embedded defaults need nothing set; every field can come from SOCE_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="SOCE_", extra="ignore")

    data_dir: Path = Field(
        default_factory=_default_data_dir, description="where embedded databases and caches live"
    )
    hash_cache: bool = Field(True, description="remember checkpoint file digests by path, size and mtime")
    merge_threads: int = Field(0, ge=0, description="threads for the streaming merge; 0 means one per core")
    merge_chunk_elements: int = Field(4 * 1024 * 1024, ge=1024, description="elements per streamed chunk")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the app database; default: SQLite at data_dir/soce.sqlite"
    )
    device: str | None = Field(None, description="torch device for evaluation; default: cuda when present")
    eval_batch_size: int = Field(32, ge=1, description="batch size of lm-eval requests")
    optuna_storage_url: str | None = Field(
        None,
        validation_alias=AliasChoices("SOCE_OPTUNA_STORAGE_URL", "OPTUNA_STORAGE_URL"),
        description="Optuna's own database for studies; default: SQLite at data_dir/optuna.sqlite",
    )

    broker_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Celery broker (Redis) for the service's queues"
    )
    visibility_timeout: int = Field(
        6 * 3600, ge=60, description="seconds before Redis redelivers an unacknowledged task (> longest task)"
    )
    job_stall_seconds: int | None = Field(
        None,
        ge=60,
        description="a job unchanged this long has its task sent again; default: visibility_timeout",
    )
    worker_heartbeat_seconds: int = Field(60, ge=5, description="a worker seen within this is alive")
    resident_cache_gib: float = Field(
        16.0, gt=0, description="GiB of resident candidates a worker keeps between tasks (least recent out)"
    )
    dashboard_public_read: bool = Field(
        True, description="the web dashboard shows pages without signing in (changes always need a key)"
    )
    dashboard_secret: str | None = Field(
        None, description="signs dashboard sessions; default: random per API process (signed out on restart)"
    )
    optuna_dashboard_url: str | None = Field(
        None, description="base URL of an optuna-dashboard on Optuna's database, linked from job pages"
    )
    webhook_retry_seconds: list[float] = Field(
        [1.0, 2.0, 4.0], description="waits between a schedule webhook's tries (one more try than waits)"
    )

    def app_database_url(self) -> str:
        """The configured database URL, or the embedded SQLite file under data_dir."""
        return self.database_url or f"sqlite:///{self.data_dir / 'soce.sqlite'}"

    def stall_seconds(self) -> int:
        """How long a job may go without progress before the sweep sends its task again."""
        return self.job_stall_seconds or self.visibility_timeout

    def optuna_url(self) -> str:
        """Optuna's database (never the app database: Optuna owns its tables and migrations)."""
        return self.optuna_storage_url or f"sqlite:///{self.data_dir / 'optuna.sqlite'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
