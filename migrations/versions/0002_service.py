"""Service tables: candidates and their tags, suites, jobs, soups, API keys, schedules and their runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen copies of the models' types: a migration must not change when the models do.
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
JOB_STATES = ("queued", "scoring", "analysing", "searching", "finalizing", "done", "failed", "cancelled")
RUN_OUTCOMES = ("running", "promoted", "not_better", "skipped", "failed")


def _when(name: str, nullable: bool = True, now: bool = False) -> sa.Column:
    default = sa.func.now() if now else None
    return sa.Column(name, sa.DateTime(timezone=True), server_default=default, nullable=nullable)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=True),
        sa.Column("architecture", JSON, nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _when("created_at", nullable=False, now=True),
        _when("updated_at", nullable=False, now=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candidates")),
    )
    op.create_index(op.f("ix_candidates_path"), "candidates", ["path"])
    op.create_index(op.f("ix_candidates_content_hash"), "candidates", ["content_hash"])

    op.create_table(
        "candidate_tags",
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["candidate_id"],
            ["candidates.id"],
            name=op.f("fk_candidate_tags_candidate_id_candidates"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("candidate_id", "tag", name=op.f("pk_candidate_tags")),
    )
    op.create_index(op.f("ix_candidate_tags_tag"), "candidate_tags", ["tag"])

    op.create_table(
        "suites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        _when("created_at", nullable=False, now=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suites")),
        sa.UniqueConstraint("content_hash", name=op.f("uq_suites_content_hash")),
    )
    op.create_index(op.f("ix_suites_name"), "suites", ["name"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("suite_id", sa.Integer(), nullable=False),
        sa.Column("recipe", JSON, nullable=False),
        sa.Column("state", sa.String(length=16), server_default="queued", nullable=False),
        sa.Column("progress", JSON, nullable=False),
        sa.Column("analysis", JSON, nullable=True),
        sa.Column("study_name", sa.String(length=255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("timings", JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        _when("created_at", nullable=False, now=True),
        _when("updated_at", nullable=False, now=True),
        _when("started_at"),
        _when("finished_at"),
        sa.CheckConstraint(_one_of("state", JOB_STATES), name=op.f("ck_jobs_state")),
        sa.ForeignKeyConstraint(["suite_id"], ["suites.id"], name=op.f("fk_jobs_suite_id_suites")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
    )
    op.create_index(op.f("ix_jobs_suite_id"), "jobs", ["suite_id"])
    op.create_index(op.f("ix_jobs_state"), "jobs", ["state"])
    op.create_index(op.f("ix_jobs_created_at"), "jobs", ["created_at"])

    op.create_table(
        "job_candidates",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_candidates_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["candidate_id"], ["candidates.id"], name=op.f("fk_job_candidates_candidate_id_candidates")
        ),
        sa.PrimaryKeyConstraint("job_id", "candidate_id", name=op.f("pk_job_candidates")),
    )
    op.create_index(op.f("ix_job_candidates_candidate_id"), "job_candidates", ["candidate_id"])

    op.create_table(
        "soups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=True),
        sa.Column("weights", JSON, nullable=False),
        sa.Column("scores", JSON, nullable=False),
        sa.Column("lineage", JSON, nullable=False),
        _when("created_at", nullable=False, now=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_soups_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_soups")),
    )
    op.create_index(op.f("ix_soups_job_id"), "soups", ["job_id"])
    op.create_index(op.f("ix_soups_content_hash"), "soups", ["content_hash"])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("read_only", sa.Boolean(), server_default=sa.false(), nullable=False),
        _when("created_at", nullable=False, now=True),
        _when("last_used_at"),
        _when("revoked_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sa.UniqueConstraint("name", name=op.f("uq_api_keys_name")),
    )

    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("cron", sa.String(length=255), nullable=False),
        sa.Column("timezone", sa.String(length=64), server_default="UTC", nullable=False),
        sa.Column("recipe_template", JSON, nullable=False),
        sa.Column("candidate_source", JSON, nullable=False),
        sa.Column("promotion_policy", JSON, nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("champion_soup_id", sa.Integer(), nullable=True),
        _when("last_run_at"),
        _when("next_run_at"),
        _when("created_at", nullable=False, now=True),
        _when("updated_at", nullable=False, now=True),
        sa.ForeignKeyConstraint(
            ["champion_soup_id"],
            ["soups.id"],
            name=op.f("fk_schedules_champion_soup_id_soups"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.UniqueConstraint("name", name=op.f("uq_schedules_name")),
    )
    op.create_index(op.f("ix_schedules_next_run_at"), "schedules", ["next_run_at"])

    op.create_table(
        "schedule_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("schedule_id", sa.Integer(), nullable=False),
        _when("due_at", nullable=False),
        sa.Column("outcome", sa.String(length=16), server_default="running", nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("details", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _when("created_at", nullable=False, now=True),
        _when("finished_at"),
        sa.CheckConstraint(_one_of("outcome", RUN_OUTCOMES), name=op.f("ck_schedule_runs_outcome")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_schedule_runs_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["schedules.id"],
            name=op.f("fk_schedule_runs_schedule_id_schedules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_runs")),
        sa.UniqueConstraint("schedule_id", "due_at", name=op.f("uq_schedule_runs_schedule_id")),
    )
    op.create_index(op.f("ix_schedule_runs_job_id"), "schedule_runs", ["job_id"])


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes on every backend.
    for table in (
        "schedule_runs",
        "schedules",
        "api_keys",
        "soups",
        "job_candidates",
        "jobs",
        "suites",
        "candidate_tags",
        "candidates",
    ):
        op.drop_table(table)
