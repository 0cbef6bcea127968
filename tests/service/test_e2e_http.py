"""End to end over HTTP: `soce serve` and real Celery workers on PostgreSQL and Redis, the tiny zoo.

A key from `soce apikey create`; the zoo's candidates and suite registered through the API; a job
with trials two at a time, polled until done; its soup loads and generates; its trials are in
Optuna's database; /metrics counts the scores computed; a second job over the same candidates finds
every score in the cache. Two workers serve the module: one on both queues, one on the gpu queue only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import pytest

from soce.db import JOB_FINISHED_STATES
from tests.service.conftest import Worker, wait_for

pytestmark = pytest.mark.slow

JOB_TIMEOUT = 900  # seconds: every evaluation takes seconds on a loaded 2-core machine
N_TRIALS, PARALLEL = 4, 2


def _soce() -> str:
    return shutil.which("soce", path=str(Path(sys.executable).parent)) or "soce"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`soce serve` on a free port, in its own process group."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.port = _free_port()
        self.log = logs / "api.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [_soce(), "serve", "--port", str(self.port), "--log-level", "warning"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def gpu_worker(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, worker: Worker
) -> Iterator[Worker]:
    """A second worker, on the gpu queue only: trials of one job can run on two workers at once."""
    w = Worker(service_env, tmp_path_factory.mktemp("gpu-worker-logs"), queues="gpu", name="gpu")
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def api(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, tiny_zoo: Path
) -> Iterator[httpx.Client]:
    """A client of `soce serve` that may read the zoo, with a read-write key made by `soce apikey create`."""
    env = {**service_env, "SOCE_CHECKPOINT_ROOTS": str(tiny_zoo)}
    server = Server(env, tmp_path_factory.mktemp("api-logs"))
    try:
        made = subprocess.run(
            [_soce(), "apikey", "create", "--name", "e2e"],
            env=service_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

        def up() -> bool:
            assert server.proc.poll() is None, f"soce serve exited:\n{server.log_tail()}"
            try:
                return client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=120, what="soce serve to answer /healthz")
        yield client
        client.close()
    finally:
        server.stop()


def metric(client: httpx.Client, name: str, labels: str = "") -> float:
    """One sample of /metrics (Prometheus text), 0 if absent."""
    text = client.get("/metrics").text
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def run_job(client: httpx.Client, workers: list[Worker], body: dict) -> dict:
    """Submit a job and poll it until it has finished; its detail."""
    r = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"e2e-{body['name']}"})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    def finished() -> dict | None:
        for w in workers:
            assert w.alive(), f"worker {w.name} exited:\n{w.log_tail()}"
        detail = client.get(f"/v1/jobs/{job_id}").json()
        return detail if detail["state"] in JOB_FINISHED_STATES else None

    started = time.monotonic()
    detail = wait_for(finished, timeout=JOB_TIMEOUT, what=f"job {body['name']}", every=2)
    print(f"job {job_id} ({body['name']}) {detail['state']} in {time.monotonic() - started:.0f} s")
    tails = "\n".join(w.log_tail() for w in workers)
    assert detail["state"] == "done", f"{detail['state']}: {detail['error']}\n{tails}"
    return detail


def test_jobs_over_http_end_to_end(
    tiny_zoo: Path, api: httpx.Client, worker: Worker, gpu_worker: Worker, service_databases
):
    # register the zoo over HTTP
    folders = sorted((tiny_zoo / "candidates").iterdir())
    r = api.post("/v1/candidates", json={"paths": [str(p) for p in folders], "tags": ["zoo"]})
    assert r.status_code == 201, r.text
    candidate_ids = [c["id"] for c in r.json()]
    r = api.post("/v1/suites", json={"path": str(tiny_zoo / "suite.yaml")})
    assert r.status_code in (200, 201), r.text
    suite_id = r.json()["id"]
    assert metric(api, "soce_score_cache_misses_total") == 0

    body = {
        "name": "e2e-first",
        "candidate_ids": candidate_ids,
        "suite_id": suite_id,
        "sampler": "tpe",
        "n_trials": N_TRIALS,
        "parallel_trials": PARALLEL,
        "seed": 0,
        "bootstrap_iterations": 200,
    }
    job = run_job(api, [worker, gpu_worker], body)

    # the detail opens with the verdict, from the typed Report the job stored (its report.json)
    assert next(iter(job)) == "verdict" and job["verdict"] == job["report"]["verdict"]
    assert job["decision"] == job["report"]["decision"]
    assert json.loads(Path(job["analysis"]["files"]["json"]).read_text()) == job["report"]
    assert job["decision"]["kind"] in ("soup", "single") and Path(job["decision"]["model"]).is_dir()
    assert job["soup"]["scores"]["decision"] == job["decision"]
    # the soup folder loads with transformers and generates
    assert job["soup"] is not None
    soup = api.get(f"/v1/soups/{job['soup']['id']}").json()
    assert soup["job_id"] == job["id"] and soup["card"] and soup["recipe"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(soup["path"])
    tokenizer = AutoTokenizer.from_pretrained(soup["path"])
    prompt = tokenizer("12+7=", return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt.shape[1]
    assert set(soup["weights"]["weights"]) <= set(job["analysis"]["scores"]["dev"]["candidates"])

    # its trials, over HTTP and in Optuna's own database through Optuna's API
    page = api.get(f"/v1/jobs/{job['id']}/trials").json()
    assert page["study_name"] == job["study_name"] and page["total"] == N_TRIALS
    assert [t["state"] for t in page["items"]] == ["complete"] * N_TRIALS
    study = optuna.load_study(study_name=job["study_name"], storage=service_databases[1])
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == N_TRIALS
    categories = set(job["analysis"]["scores"]["dev"]["categories"])
    for t in done:
        assert set(t.user_attrs["category_scores"]) == categories
        assert t.user_attrs["job"] == job["id"] and t.value == pytest.approx(t.user_attrs["objective"])
    print("trials evaluated by", sorted({t.user_attrs["worker"] for t in done}))
    assert job["progress"]["search"]["done"] == N_TRIALS

    # /metrics: the scores computed, the finished trials, the job
    misses = metric(api, "soce_score_cache_misses_total")
    assert misses == job["analysis"]["scores"]["evaluated_tasks"] > 0
    assert metric(api, "soce_score_cache_hits_total") == 0
    assert metric(api, "soce_trial_duration_seconds_count") >= N_TRIALS
    assert metric(api, "soce_jobs", '{state="done"}') == 1

    # a second job over the same candidates (a new study: another seed) scores nothing again
    second = run_job(api, [worker, gpu_worker], {**body, "name": "e2e-second", "seed": 1, "n_trials": 2})
    assert second["study_name"] != job["study_name"]
    assert second["analysis"]["scores"]["evaluated_tasks"] == 0
    assert metric(api, "soce_score_cache_misses_total") == misses  # not one score computed again
    assert metric(api, "soce_score_cache_hits_total") == misses  # the same lookups, all found
    assert metric(api, "soce_jobs", '{state="done"}') == 2
