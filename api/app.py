"""The app factory (`uvicorn --factory api.app:create_app`): settings, engine, broker, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from api.auth import require_reader
from api.broker import JobQueue
from api.dashboard_session import signing_key
from api.errors import install_error_handlers
from api.middleware import BodySizeLimit, ConcurrencyLimit, ServerTiming
from api.routes import candidates, dashboard, health, jobs, schedules, schemas, soups, suites
from api.trials import OptunaStudies
from soce import __version__
from soce.config import Settings, get_settings
from soce.db.engine import get_engine

DESCRIPTION = """Soup of Category Experts as a service: register checkpoints and suites, submit jobs that
the workers run (score, analyse, search, finalize), read trials, soups and reports. Reads are open
unless SOCE_DASHBOARD_PUBLIC_READ is false (then they need a key, read-only is enough); writes need
`Authorization: Bearer <key>` with a read-write key from `soce apikey create`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app on `settings` (default: the environment's); nothing connects until a request needs it."""
    settings = settings or get_settings()
    queue = JobQueue(settings.broker_url, visibility_timeout=settings.visibility_timeout)
    optuna = OptunaStudies(settings.optuna_url())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()
        optuna.close()

    app = FastAPI(
        title="SoCE",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(require_reader)],  # reads under /v1/ when SOCE_DASHBOARD_PUBLIC_READ=false
    )
    app.state.settings = settings
    app.state.engine = get_engine(settings.app_database_url(), pre_ping=False)
    app.state.queue = queue
    app.state.optuna = optuna
    app.state.worker_probe = lambda: queue.workers(timeout=health.WORKER_PING_SECONDS)
    secret = settings.dashboard_secret
    # None: every process reads the one secret kept in the app database, on first use
    app.state.dashboard_secret = signing_key(secret) if secret else None
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    app.add_middleware(ServerTiming)  # the server's own time: from admission to the response's headers
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent_requests)  # outermost: the queue
    for module in (candidates, suites, jobs, soups, schedules, schemas, health, dashboard):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    return app
