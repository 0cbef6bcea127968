"""Read load on the REST API: `soce serve` against PostgreSQL, many concurrent clients on the job reads.

Creates a throwaway app database (`soce_bench_<random>`, migrated with our migrations) and a throwaway
Optuna database beside it, fills them with JOBS jobs as the workers leave them (a suite, candidates,
jobs in every state; the searched ones with an Optuna study and its trials, those past the search with
its summary in their analysis, the finished ones with a soup), vacuums and analyzes them as autovacuum
would soon after such a load (without planner statistics a page of jobs costs PostgreSQL 1.7 times the
CPU), starts `soce serve` with SERVER_WORKERS worker processes (default 1, see below) on a free port,
and runs CLIENTS async HTTP clients for SECONDS, each with its own keep-alive connection, in a closed
loop alternating at random between `GET /v1/jobs` (a page at a random offset) and `GET /v1/jobs/{id}`
(a random job). Reads need no API key.

The clients are opened and warmed up (one read of each kind, bodies checked) before the clock and the
CPU meters start; they run on uvloop where it is installed. One AsyncClient per client, not one
shared by all: httpx's pool costs the shared client about three times the CPU per request at 50
connections, and the clients share the CPUs with the server.

Printed per endpoint and overall: requests, throughput (req/s), p50 and p99 latency as the clients
see it, and errors (any status but 200, and transport errors); target beside it: p99 < 100 ms at 50
clients, no errors. Beside them, p50 and p99 of the server's own time per request, from the
`Server-Timing: app;dur=<ms>` header of each response (from the request's admission into the app,
SOCE_MAX_CONCURRENT_REQUESTS at a time, to its response's headers), with its target: p99 < 50 ms at
50 clients, no errors. What the clients see beyond it is the queue for admission, HTTP and the
clients themselves, on the same CPUs.
Then CPU per request of the server's processes, of the PostgreSQL backends that serve it and of the
clients, and what that allows: in a closed loop, mean latency = clients / throughput (Little's law).
The clients share the machine with the server, so a loaded machine shows in the numbers (the load
average is printed before and after). Both databases are dropped at the end, also
after Ctrl-C or an error.

One server worker by default: on a 2-CPU machine where the clients and PostgreSQL take close to half
the CPU, one process serves about 640 req/s at 0.8 of a CPU, and two measured worse in three paired
runs (the 20 s pair: 522 against 640 req/s, p99 267 against 196 ms, server CPU 1.7 against 1.3 ms a
request; two 10 s pairs alike). Use --server-workers N on a machine with more CPUs than the load needs.

    python bench/api_load.py [--clients 50] [--seconds 20] [--jobs 1000] [--page-size 50]
                             [--server-workers 1] [--admin-url postgresql+psycopg://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

TARGET_P99_MS = 100.0
TARGET_APP_P99_MS = 50.0  # the server's own time (Server-Timing), which a small machine can hold
CATEGORIES = ("arithmetic", "strings", "recall", "counting")
# how the workers leave jobs behind: mostly finished, some in every other state
STATES = {
    "done": 50,
    "failed": 10,
    "cancelled": 5,
    "queued": 10,
    "scoring": 8,
    "analysing": 5,
    "searching": 7,
    "finalizing": 5,
}
SEARCHED = ("searching", "finalizing", "done")
LIST, DETAIL = "GET /v1/jobs?limit&offset", "GET /v1/jobs/{id}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def fill_optuna(url: str, *, studies: int, trials: int) -> dict[str, tuple[int, float]]:
    """`studies` single-objective studies of `trials` trials each, with per-category scores as the
    workers record them (trial user attributes); each one's best trial (number, value) by name."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url)
    best = {}
    for s in range(studies):
        study = optuna.create_study(
            storage=storage,
            study_name=f"bench-{s}",
            direction="maximize",
            sampler=optuna.samplers.RandomSampler(seed=s),
        )

        def objective(trial: optuna.Trial) -> float:
            weights = [trial.suggest_float(f"x{k}", 0.0, 1.0) for k in range(3)]
            scores = {c: round(0.4 + 0.5 * w, 4) for c, w in zip(CATEGORIES, [*weights, 0.5], strict=True)}
            trial.set_user_attr("category_scores", scores)
            return sum(scores.values()) / len(scores)

        study.optimize(objective, n_trials=trials)
        best[study.study_name] = (study.best_trial.number, study.best_value)
    storage.engine.dispose()
    return best


def fill_app(url: str, *, jobs: int, studies: dict[str, tuple[int, float]], seed: int = 0) -> list[int]:
    """A suite, eight candidates and `jobs` jobs (with soups for the finished ones); the job ids."""
    from sqlalchemy import select

    from api.schemas import JobCreate
    from soce.db import Candidate, Job, Soup, Suite, create_app_engine, session_scope

    rng = random.Random(seed)
    study_names = list(studies)
    engine = create_app_engine(url)
    spec = {
        "name": "bench",
        "dev_split": "validation",
        "test_split": "test",
        "categories": [
            {"name": c, "tasks": [{"name": f"zoo_{c}", "metric": "exact_match,none"}]} for c in CATEGORIES
        ],
    }
    recipe = JobCreate(name="bench", suite_id=1, tag="bench").search_settings()
    now = datetime.now(UTC)
    with session_scope(engine) as session:
        suite = Suite(name="bench", spec=spec, content_hash=digest(spec))
        candidates = [
            Candidate(
                name=f"cand-{i}",
                path=f"/checkpoints/cand-{i}",
                content_hash=digest("candidate", i),
                architecture={"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2},
                size_bytes=1_000_000 + i,
                tags=["bench"],
            )
            for i in range(8)
        ]
        session.add_all([suite, *candidates])
        states = rng.choices(list(STATES), weights=list(STATES.values()), k=jobs)
        for n, state in enumerate(states):
            created = now - timedelta(minutes=jobs - n)
            members = sorted(rng.sample(candidates, rng.randint(3, 8)), key=lambda c: c.name)
            finished = state in ("done", "failed", "cancelled")
            job = Job(
                name=f"bench-{n}",
                suite=suite,
                candidates=members,
                recipe=recipe,
                state=state,
                progress={"score": {"done": 16, "total": 16}} if state != "queued" else {},
                timings={"score": 12.5, "analyse": 0.2} if state not in ("queued", "scoring") else {},
                created_at=created,
                started_at=None if state == "queued" else created + timedelta(seconds=5),
                finished_at=created + timedelta(minutes=30) if finished else None,
                error="evaluation failed: CUDA out of memory" if state == "failed" else None,
            )
            if state in SEARCHED or state == "analysing":
                labels = [c.name for c in members]
                job.analysis = {
                    "scores": {"dev": {c: {x: rng.random() for x in CATEGORIES} for c in labels}},
                    "correlation": {a: {b: rng.uniform(-1, 1) for b in CATEGORIES} for a in CATEGORIES},
                    "experts": [{"category": c, "candidate": rng.choice(labels)} for c in CATEGORIES],
                    "warnings": [],
                }
            if state in SEARCHED:
                job.study_name = study_names[n % len(study_names)]
            if state in SEARCHED and state != "searching":  # the search's summary, as the workers write it
                number, value = studies[job.study_name]
                job.analysis["search"] = {
                    "study": job.study_name,
                    "best_trial": number,
                    "best_dev_objective": value,
                    "weights": {c.name: round(1 / len(members), 4) for c in members},
                    "finished_by": "search",
                }
            if state == "done":
                weights = {c.name: round(1 / len(members), 4) for c in members}
                session.add(
                    Soup(
                        job=job,
                        path=f"/var/lib/soce/soups/job-{n}",
                        content_hash=digest("soup", n),
                        weights=weights,
                        scores={"test_average": rng.random(), "dev_average": rng.random()},
                        lineage={"method": "linear", "study": job.study_name},
                    )
                )
            session.add(job)
        session.flush()
        ids = list(session.scalars(select(Job.id).order_by(Job.id)))
    engine.dispose()
    return ids


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def server_ms(header: str | None) -> float | None:
    """The `app` duration in milliseconds of a Server-Timing header; None without one."""
    for metric in (header or "").split(","):
        name, _, params = metric.strip().partition(";")
        if name == "app":
            for param in params.split(";"):
                key, _, value = param.strip().partition("=")
                if key == "dur":
                    return float(value)
    return None


class Tally:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {LIST: [], DETAIL: []}
        self.server: dict[str, list[float]] = {LIST: [], DETAIL: []}  # seconds, from Server-Timing
        self.errors: dict[str, int] = {LIST: 0, DETAIL: 0}
        self.examples: list[str] = []

    def error(self, endpoint: str, what: str) -> None:
        self.errors[endpoint] += 1
        if len(self.examples) < 3:
            self.examples.append(f"{endpoint}: {what}")


async def open_client(base: str, *, ids: list[int], page: int, rng: random.Random) -> httpx.AsyncClient:
    """A client with its own keep-alive connection, opened and warmed up: one read of each kind, with
    their bodies checked (not counted)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    http = httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits)
    page_body = (await http.get(f"/v1/jobs?limit={page}")).json()
    assert page_body["total"] == len(ids), page_body
    job_id = rng.choice(ids)
    assert (await http.get(f"/v1/jobs/{job_id}")).json()["id"] == job_id
    return http


async def one_client(
    http: httpx.AsyncClient, *, until: float, ids: list[int], page: int, rng: random.Random, tally: Tally
) -> None:
    """Closed loop: the next request as soon as the last one's body is in, until `until`."""
    offsets = max(1, len(ids) - page + 1)
    while time.perf_counter() < until:
        if rng.random() < 0.5:
            endpoint, url = LIST, f"/v1/jobs?limit={page}&offset={rng.randrange(offsets)}"
        else:
            endpoint, url = DETAIL, f"/v1/jobs/{rng.choice(ids)}"
        started = time.perf_counter()
        try:
            r = await http.get(url)
            if r.status_code != 200:
                tally.error(endpoint, f"{r.status_code} {r.text[:200]}")
            ms = server_ms(r.headers.get("server-timing"))
            if ms is not None:
                tally.server[endpoint].append(ms / 1000)
        except httpx.HTTPError as e:
            tally.error(endpoint, f"{type(e).__name__}: {e}")
        tally.latencies[endpoint].append(time.perf_counter() - started)


class CpuMeter:
    """CPU seconds used by this process, the server's process group and the PostgreSQL backends that
    serve the bench's database (they run on the same machine: their work per request is the server's
    too). A backend that starts during the run counts whole; one that ends during it is missed."""

    def __init__(self, server_pgid: int, admin_url: str, database: str) -> None:
        self.server_pgid, self.admin_url, self.database = server_pgid, admin_url, database

    def read(self) -> dict[str, Any]:
        backends = {pid: pids_cpu_seconds([pid]) for pid in backend_pids(self.admin_url, self.database)}
        return {
            "server": group_cpu_seconds(self.server_pgid),
            "postgres": {pid: t for pid, t in backends.items() if t is not None},
            "clients": time.process_time(),
        }

    @staticmethod
    def used(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
        old = before["postgres"]
        return {
            "server": None
            if None in (before["server"], after["server"])
            else after["server"] - before["server"],
            "postgres": sum(t - old.get(pid, 0.0) for pid, t in after["postgres"].items()) or None,
            "clients": after["clients"] - before["clients"],
        }


async def run_load(
    base: str, *, clients: int, seconds: float, ids: list[int], page: int, meter: CpuMeter
) -> tuple[Tally, float, dict[str, float | None]]:
    """The tally, the seconds the clients ran and the CPU seconds used meanwhile; the clients are
    opened and warmed up before the clock and the CPU meters start."""
    rngs = [random.Random(i) for i in range(clients)]
    https = await asyncio.gather(*(open_client(base, ids=ids, page=page, rng=rng) for rng in rngs))
    tally = Tally()
    try:
        before = meter.read()
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(
            *(
                one_client(http, until=until, ids=ids, page=page, rng=rng, tally=tally)
                for http, rng in zip(https, rngs, strict=True)
            )
        )
        wall = time.perf_counter() - started
        after = meter.read()
    finally:
        await asyncio.gather(*(http.aclose() for http in https))
    return tally, wall, meter.used(before, after)


def _cpu_seconds(stat: Path) -> tuple[int, int] | None:
    """(process group, user + system ticks) of one /proc/PID/stat; None if the process has ended."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[2]), int(fields[11]) + int(fields[12])  # fields after the name: state, ppid, pgrp


def group_cpu_seconds(pgid: int) -> float | None:
    """CPU seconds (user + system) used so far by the processes of group `pgid`; None without /proc."""
    found = [t for g, t in filter(None, map(_cpu_seconds, Path("/proc").glob("[0-9]*/stat"))) if g == pgid]
    return sum(found) / os.sysconf("SC_CLK_TCK") if found else None


def pids_cpu_seconds(pids: list[int]) -> float | None:
    """CPU seconds used so far by these processes (those still running); None if none is."""
    found = [r[1] for r in (_cpu_seconds(Path(f"/proc/{pid}/stat")) for pid in pids) if r is not None]
    return sum(found) / os.sysconf("SC_CLK_TCK") if found else None


def backend_pids(admin_url: str, database: str) -> list[int]:
    """The PostgreSQL backends connected to `database` (the server's pools, warmed up by then)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url)
    try:
        with engine.connect() as conn:
            query = text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()")
            return list(conn.scalars(query, {"d": database}))
    finally:
        engine.dispose()


def start_server(env: dict[str, str], port: int, workers: int, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "soce.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--workers", str(workers), "--log-level", "warning"]
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(base: str, server: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"soce serve exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/v1/jobs", params={"limit": 1}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"soce serve did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=20)


def report(tally: Tally, wall: float, args: argparse.Namespace, cpu: dict[str, float | None]) -> None:
    rows = [(name, sorted(lat), tally.errors[name]) for name, lat in tally.latencies.items()]
    rows.append(("overall", sorted(x for _, lat, _ in rows for x in lat), sum(tally.errors.values())))
    server = {name: sorted(values) for name, values in tally.server.items()}
    server["overall"] = sorted(x for values in tally.server.values() for x in values)
    print(
        f"\n{'endpoint':28s} {'requests':>9s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s}"
        f" {'app p50':>8s} {'app p99':>8s}"
    )
    for name, lat, errors in rows:
        print(
            f"{name:28s} {len(lat):9d} {len(lat) / wall:8.1f} {percentile(lat, 50) * 1000:8.1f} "
            f"{percentile(lat, 99) * 1000:8.1f} {errors:7d} {percentile(server[name], 50) * 1000:8.1f} "
            f"{percentile(server[name], 99) * 1000:8.1f}"
        )
    print("  app p50/p99: the server's own time per request (its Server-Timing header), in ms")
    for example in tally.examples:
        print(f"  error: {example}")
    n = len(rows[-1][1])
    for who, seconds in cpu.items():
        if seconds is not None and n:
            print(f"{who} CPU per request: {seconds / n * 1000:.2f} ms ({seconds:.1f} s over {wall:.1f} s)")
    known = [seconds for seconds in cpu.values() if seconds is not None]
    if n and known:
        # Little's law for a closed loop: clients = throughput x mean latency, so the mean latency is
        # set by how many requests a second the machine's CPUs can serve at this much CPU each
        per_request, cpus = sum(known) / n, os.cpu_count() or 1
        mean = sum(rows[-1][1]) / n
        print(
            f"all of it: {per_request * 1000:.2f} ms of CPU per request, at most {cpus / per_request:.0f} "
            f"req/s on {cpus} CPUs; mean latency {mean * 1000:.1f} ms = {args.clients} clients / "
            f"{n / wall:.1f} req/s (Little's law)"
        )
    p99 = percentile(rows[-1][1], 99) * 1000
    errors = rows[-1][2]
    verdict = "met" if p99 < TARGET_P99_MS and errors == 0 else "NOT met"
    print(
        f"target: p99 < {TARGET_P99_MS:.0f} ms at 50 clients, no errors -> {verdict} "
        f"(p99 {p99:.1f} ms, {errors} errors, {args.clients} clients)"
    )
    app_p99 = percentile(server["overall"], 99) * 1000 if server["overall"] else float("nan")
    verdict = "met" if app_p99 < TARGET_APP_P99_MS and errors == 0 else "NOT met"
    print(
        f"server target: app p99 < {TARGET_APP_P99_MS:.0f} ms at 50 clients, no errors -> {verdict} "
        f"(app p99 {app_p99:.1f} ms, {errors} errors, {args.clients} clients; the clients share the CPUs)"
    )


def event_loop_run() -> Any:
    """uvloop's run where it is installed (the clients' share of the CPU is smaller), asyncio's if not."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50, help="concurrent clients, one connection each")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the clients read")
    ap.add_argument("--jobs", type=int, default=1000, help="jobs in the database")
    ap.add_argument("--page-size", type=int, default=50, help="limit of each GET /v1/jobs")
    ap.add_argument("--server-workers", type=int, default=1, help="uvicorn worker processes of soce serve")
    ap.add_argument("--studies", type=int, default=10, help="Optuna studies the searched jobs point at")
    ap.add_argument("--trials", type=int, default=20, help="trials per study")
    ap.add_argument(
        "--admin-url",
        default=os.environ.get(
            "SOCE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL URL allowed to CREATE and DROP DATABASE",
    )
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # a killed run drops its databases too

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from soce.db import create_app_engine
    from soce.db.migrate import upgrade

    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    name = f"soce_bench_{uuid.uuid4().hex[:12]}"
    names = [name, f"{name}_optuna"]
    app_url, optuna_url = (
        make_url(args.admin_url).set(database=n).render_as_string(hide_password=False) for n in names
    )
    server: subprocess.Popen | None = None
    created: list[str] = []
    try:
        with admin.connect() as conn:
            for n in names:
                conn.execute(text(f'CREATE DATABASE "{n}"'))
                created.append(n)
        started = time.perf_counter()
        engine = create_app_engine(app_url)
        upgrade(engine)
        engine.dispose()
        studies = fill_optuna(optuna_url, studies=args.studies, trials=args.trials)
        ids = fill_app(app_url, jobs=args.jobs, studies=studies)
        for url in (app_url, optuna_url):  # what autovacuum does within a minute of such a load
            vacuum = create_engine(url, isolation_level="AUTOCOMMIT")
            with vacuum.connect() as conn:
                conn.execute(text("VACUUM ANALYZE"))
            vacuum.dispose()
        print(
            f"databases {name} (+ _optuna): {len(ids)} jobs, {args.studies} studies x {args.trials} trials, "
            f"filled in {time.perf_counter() - started:.1f} s"
        )

        workdir = Path(tempfile.mkdtemp(prefix="soce-bench-api-"))
        env = {
            **os.environ,
            "SOCE_DATABASE_URL": app_url,
            "OPTUNA_STORAGE_URL": optuna_url,
            "SOCE_DATA_DIR": str(workdir / "data"),
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = workdir / "serve.log"
        server = start_server(env, port, args.server_workers, log)
        wait_ready(base, server, log)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"soce serve ({args.server_workers} worker process(es)) on {base}; {args.clients} clients for "
            f"{args.seconds:.0f} s, pages of {args.page_size}; load average before: {load} "
            f"({os.cpu_count()} CPUs)"
        )
        meter = CpuMeter(server.pid, args.admin_url, name)
        load_run = run_load(
            base, clients=args.clients, seconds=args.seconds, ids=ids, page=args.page_size, meter=meter
        )
        tally, wall, cpu = event_loop_run()(load_run)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        report(tally, wall, args, cpu)
        print(f"load average after: {load}")
    finally:
        if server is not None:
            stop_server(server)
        with admin.connect() as conn:
            for n in created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
        admin.dispose()
        if created:
            print(f"dropped {', '.join(created)}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted")
