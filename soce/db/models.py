"""Tables of the app database (ours only; Optuna keeps its own database)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, MetaData, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints so migrations can drop and alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Score(Base):
    """One task's score for one checkpoint content, cached under `key` (a hash of the other key fields)."""

    __tablename__ = "scores"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    checkpoint_hash: Mapped[str] = mapped_column(String(64), index=True)
    task_spec_hash: Mapped[str] = mapped_column(String(64))
    evaluator: Mapped[str] = mapped_column(String(64))
    evaluator_version: Mapped[str] = mapped_column(String(64))
    limit: Mapped[int | None]
    num_fewshot: Mapped[int]
    seed: Mapped[int]
    task: Mapped[str] = mapped_column(String(255))
    split: Mapped[str] = mapped_column(String(64))
    metric: Mapped[str] = mapped_column(String(255))
    value: Mapped[float]
    stderr: Mapped[float | None]
    n: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    def __repr__(self) -> str:
        return f"Score({self.task} {self.metric}={self.value:.4g} ckpt={self.checkpoint_hash[:12]})"
