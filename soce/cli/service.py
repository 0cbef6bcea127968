"""`soce worker`, `soce beat` and `soce serve`: the service's processes (Celery worker and beat, the API)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from soce.cli._common import fail, friendly
from soce.flow import QUEUES

WORKER_QUEUES = QUEUES  # what --queues accepts: every queue a task is routed to


@friendly
def worker(
    queues: Annotated[
        str, typer.Option("--queues", "-Q", help="comma-separated queues to consume: gpu, cpu or gpu,cpu")
    ] = "gpu,cpu",
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="tasks at once (1 per GPU on gpu queues)")
    ] = 1,
    pool: Annotated[
        str, typer.Option("--pool", help="Celery pool: prefork (default), solo or threads")
    ] = "prefork",
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Celery log level")] = "INFO",
    hostname: Annotated[
        str | None, typer.Option("--hostname", "-n", help="worker name (default: celery@host)")
    ] = None,
) -> None:
    """Run a Celery worker on the service's queues (Redis broker, app database and Optuna storage)."""
    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in wanted if q not in WORKER_QUEUES]
    if not wanted or unknown:
        fail(f"--queues {queues!r}: use gpu, cpu or gpu,cpu")
    if pool not in ("prefork", "solo", "threads"):
        fail(f"--pool {pool!r}: use prefork, solo or threads")
    from workers.celery_app import app as celery_app

    argv = ["worker", f"--queues={','.join(wanted)}", f"--concurrency={concurrency}", f"--pool={pool}"]
    argv += [f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    celery_app.worker_main(argv=argv)


@friendly
def beat(
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Celery log level")] = "INFO",
    schedule: Annotated[
        Path | None,
        typer.Option("--schedule", "-s", help="beat's state file (default: under SOCE_DATA_DIR)"),
    ] = None,
) -> None:
    """Run Celery beat for the service's periodic tasks (Redis broker); run one per deployment."""
    from soce.config import get_settings
    from workers.celery_app import app as celery_app

    path = schedule or get_settings().data_dir / "celerybeat-schedule"
    path.parent.mkdir(parents=True, exist_ok=True)
    # remote control lets `celery inspect ping -d celerybeat@HOST` health-check beat (docker-compose.yml)
    argv = ["beat", f"--loglevel={loglevel}", f"--schedule={path}", "--enable-remote-control"]
    code = celery_app.start(argv=argv)
    if code:
        raise typer.Exit(code)


@friendly
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the REST API (OpenAPI at /docs) on the configured database and broker."""
    import uvicorn

    uvicorn.run(
        "api.app:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level
    )


def register(app: typer.Typer) -> None:
    """Add worker, beat and serve to `app`."""
    for command in (worker, beat, serve):
        app.command()(command)
