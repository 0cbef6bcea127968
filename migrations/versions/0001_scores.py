"""Scores: per-task results cached by checkpoint content, task spec, evaluator, limit, few-shot and seed.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("checkpoint_hash", sa.String(length=64), nullable=False),
        sa.Column("task_spec_hash", sa.String(length=64), nullable=False),
        sa.Column("evaluator", sa.String(length=64), nullable=False),
        sa.Column("evaluator_version", sa.String(length=64), nullable=False),
        sa.Column("limit", sa.Integer(), nullable=True),
        sa.Column("num_fewshot", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=255), nullable=False),
        sa.Column("split", sa.String(length=64), nullable=False),
        sa.Column("metric", sa.String(length=255), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("stderr", sa.Double(), nullable=True),
        sa.Column("n", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scores")),
        sa.UniqueConstraint("key", name=op.f("uq_scores_key")),
    )
    op.create_index(op.f("ix_scores_checkpoint_hash"), "scores", ["checkpoint_hash"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_scores_checkpoint_hash"), table_name="scores")
    op.drop_table("scores")
