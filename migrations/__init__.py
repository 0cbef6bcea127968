"""Alembic migrations of the app database (our tables only, version table `soce_alembic_version`).

Run them with `soce.db.migrate.upgrade(engine)`; embedded SQLite databases upgrade themselves.
"""
