"""One Settings object for the whole project, read from SOCE_* environment variables."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "soce"


def path_under_roots(path: str | Path, roots: Sequence[Path]) -> Path | None:
    """`path` with symlinks and '..' resolved, when it lies under one of `roots` (resolved too); else None.

    Only names are looked at (no file is opened), so a path outside the roots is refused without
    being read.
    """
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte, a name the system refuses
        return None
    for root in roots:
        if resolved.is_relative_to(root.resolve()):
            return resolved
    return None


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
    job_stall_seconds: int = Field(
        60,
        ge=15,
        description="a job whose row and heartbeat are both older than this, with no message waiting in "
        "the broker, has its task sent again by the sweep (read by the cpu worker that runs the sweep)",
    )
    job_heartbeat_seconds: float = Field(
        5.0,
        gt=0,
        description="how often a worker running a job's task proves it is alive (read by the workers); "
        "keep it well under job_stall_seconds",
    )
    worker_heartbeat_seconds: int = Field(60, ge=5, description="a worker seen within this is alive")
    # the largest legitimate body is an inline suite (POST /v1/suites) at about 80 bytes a task: 1 MiB
    # holds some 10,000 tasks (MMLU, as lm-eval splits it, is 57)
    max_request_bytes: int = Field(
        1 << 20, ge=1024, description="largest request body the API reads; a larger one is refused (413)"
    )
    resident_cache_gib: float = Field(
        16.0, gt=0, description="GiB of resident candidates a worker keeps between tasks (least recent out)"
    )
    checkpoint_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="absolute folders the API may read: candidate folders and suite files must lie under "
        "one; a JSON list or paths separated by ':'. Unset: the API reads no server path",
    )
    dashboard_public_read: bool = Field(
        True,
        description="GETs under /v1/ and dashboard pages need no key or sign-in (changes always need one)",
    )
    dashboard_secret: str | None = Field(
        None,
        description="signs dashboard sessions; default: one generated once and kept in the app database",
    )
    optuna_dashboard_url: str | None = Field(
        None, description="base URL of an optuna-dashboard on Optuna's database, linked from job pages"
    )
    max_concurrent_requests: int = Field(
        4,
        ge=1,
        le=1000,
        description="requests one API process works on at once; the others wait in arrival order "
        "(read by the API)",
    )
    transient_retry_seconds: list[float] = Field(
        default=[1.0, 2.0, 4.0, 8.0, 15.0],
        description="a task that meets an error a retry can cure (a database or broker connection lost, "
        "a server restarting, a serialization failure) runs again after each of these delays, in the "
        "worker; then Celery retries it after transient_requeue_seconds (read by the workers)",
    )
    transient_requeue_seconds: float = Field(
        default=30.0, gt=0, description="delay of Celery's retries of such a task (read by the workers)"
    )
    transient_requeues: int = Field(
        default=10, ge=0, description="Celery retries of such a task before it is given up to the sweep"
    )
    webhook_retry_seconds: list[float] = Field(
        [1.0, 2.0, 4.0], description="waits between a schedule webhook's tries (one more try than waits)"
    )

    @field_validator("checkpoint_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        """SOCE_CHECKPOINT_ROOTS: a JSON list, or absolute paths separated by ':' (like PATH)."""
        if not isinstance(value, str):
            return value
        if value.strip().startswith("["):
            return json.loads(value)
        return [part for part in value.split(os.pathsep) if part.strip()]

    @field_validator("checkpoint_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Path]) -> list[Path]:
        for root in roots:
            if not root.is_absolute():
                raise ValueError(f"checkpoint root {str(root)!r} is not an absolute path")
        return roots

    def app_database_url(self) -> str:
        """The configured database URL, or the embedded SQLite file under data_dir."""
        return self.database_url or f"sqlite:///{self.data_dir / 'soce.sqlite'}"

    def stall_seconds(self) -> int:
        """How long a job may go without progress or a heartbeat before the sweep sends its task again."""
        return self.job_stall_seconds

    def optuna_url(self) -> str:
        """Optuna's database (never the app database: Optuna owns its tables and migrations)."""
        return self.optuna_storage_url or f"sqlite:///{self.data_dir / 'optuna.sqlite'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
