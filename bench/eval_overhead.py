"""Evaluation overhead: our lm_eval evaluator (tasks, requests and batches built once, reused) against
lm_eval.simple_evaluate with lm-eval's HFLM (tasks built on every call), N evaluations each of one
in-memory model.

Printed per evaluation (medians): wall time of each and their ratio; the time inside the model's
forward passes (forward hooks on the model) and inside the model's request calls (ours: BatchedLM;
theirs: HFLM; tokenising, batching, the generation loop and the forward passes); the rest is
lm-eval's request building, filters and metrics. Our overhead beyond the forward passes is the
figure to keep small (goal: at most 10% of an evaluation). Also what our first evaluation (which
builds the tasks and requests) costs, and a score-cache hit in a fresh process. Both sides use the
same batch size, no sample logging and the same split override; their scores must be equal.

    python bench/eval_overhead.py [--zoo DIR] [--runs 5] [--split dev] [--batch-size 32]
                                  [--device cpu] [--threads N] [--workdir DIR]

--zoo DIR reads DIR/suite.yaml and the first candidate folder under DIR/candidates (or any folder
of DIR with a config.json). Without it, the tiny reference zoo is built under --workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_fallback(root: Path) -> tuple[Path, Path]:
    """The tiny reference zoo under ROOT (built once, about 30 s), its suite and first candidate."""
    from soce.zoo.build import build_zoo

    if not (root / "zoo.json").is_file():
        print(f"building the tiny zoo in {root} ...", flush=True)
        build_zoo(root, size="tiny", seed=0, force=True)
    return zoo_inputs(root)


def zoo_inputs(zoo: Path) -> tuple[Path, Path]:
    folders = sorted((zoo / "candidates").glob("*/config.json")) or sorted(zoo.glob("*/config.json"))
    if not (zoo / "suite.yaml").is_file() or not folders:
        raise SystemExit(f"{zoo}: expected suite.yaml and candidate folders (candidates/*/config.json)")
    return zoo / "suite.yaml", folders[0].parent


def timed_hflm_class() -> type:
    """lm-eval's HFLM without progress bars, adding up the wall time of its request calls."""
    from lm_eval.models.huggingface import HFLM

    class TimedHFLM(HFLM):
        request_seconds = 0.0

        def _timed(self, method, requests: list) -> list:
            started = time.perf_counter()
            try:
                return method(requests, disable_tqdm=True)
            finally:
                self.request_seconds += time.perf_counter() - started

        def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list:
            return self._timed(super().loglikelihood, requests)

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list:
            return self._timed(super().loglikelihood_rolling, requests)

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list:
            return self._timed(super().generate_until, requests)

    return TimedHFLM


class ForwardClock:
    """Wall time spent inside the model's forward calls (every generation step is one)."""

    def __init__(self, model, device: str) -> None:
        import torch

        self.total = 0.0
        self._sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self._start = 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _pre(self, *_) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _post(self, *_) -> None:
        self._sync()
        self.total += time.perf_counter() - self._start


_HIT_PROBE = """
import json, sys, time
from evaluators import LmEvalEvaluator
from soce.schemas.suite import SuiteSpec
from soce.score_cache import score_checkpoint
suite, ckpt, split = SuiteSpec.from_file(sys.argv[1]), sys.argv[2], sys.argv[3]
times = []
for _ in range(6):
    t = time.perf_counter()
    got = score_checkpoint(LmEvalEvaluator(), ckpt, suite, split)
    times.append(time.perf_counter() - t)
heavy = [m for m in ("torch", "lm_eval", "transformers") if m in sys.modules]
print(json.dumps({"first": times[0], "warm": min(times[1:]), "cached": got.cached_tasks, "heavy": heavy}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, help="a zoo folder (suite.yaml, tasks/, candidates/)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--split", choices=["dev", "test"], default="dev")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default=None, help="default: cuda when present")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "soce-bench-eval")
    args = ap.parse_args()

    os.environ["SOCE_DATA_DIR"] = str(args.workdir / "data")  # HF caches and the score cache
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.zoo:
        suite_file, checkpoint = zoo_inputs(args.zoo)
    else:
        suite_file, checkpoint = build_fallback(args.workdir / "zoo")

    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from evaluators import LmEvalEvaluator
    from evaluators.harness import apply_offline_environment
    from soce.schemas.suite import SuiteSpec

    apply_offline_environment()
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if args.threads:
        torch.set_num_threads(args.threads)
    suite = SuiteSpec.from_file(suite_file)
    evaluator = LmEvalEvaluator(batch_size=args.batch_size, device=args.device)
    model, tokenizer = evaluator.load_checkpoint(checkpoint)
    device = str(model.device)
    clock = ForwardClock(model, device)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model {checkpoint} ({params / 1e6:.2f}M parameters) on {device}, {torch.get_num_threads()} threads"
    )
    print(f"suite {suite.name} {args.split}: {', '.join(t.name for t in suite.tasks)}; {args.runs} runs each")

    hflm = timed_hflm_class()
    in_requests = {"seconds": 0.0}

    def timed(fn) -> tuple[float, float, float, object]:
        """(wall, forward, HFLM requests) seconds and the result of one evaluation."""
        clock.total = 0.0
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, clock.total, in_requests["seconds"], out

    def ours() -> dict:
        got = evaluator.evaluate_model(model, tokenizer, suite, args.split)
        in_requests["seconds"] = evaluator.last_request_seconds
        return got

    split_name = suite.split_name(args.split)
    specs = [{"group": "bench", "task": [{"task": t.name, "test_split": split_name} for t in suite.tasks]}]

    def plain() -> dict:
        lm = hflm(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)
        manager = TaskManager(include_path=suite.include_path, include_defaults=False)
        got = simple_evaluate(
            model=lm, tasks=specs, task_manager=manager, num_fewshot=suite.num_fewshot, limit=suite.limit,
            log_samples=False, fewshot_random_seed=suite.seed,
        )  # fmt: skip
        in_requests["seconds"] = lm.request_seconds
        return got

    first_wall = timed(ours)[0]
    mine = [timed(ours) for _ in range(args.runs)]
    theirs = [timed(plain) for _ in range(args.runs)]
    for t in suite.tasks:  # the same numbers, or the comparison means nothing
        a, b = mine[-1][3][t.name].value, theirs[-1][3]["results"][t.name][t.metric]
        assert abs(a - b) < 1e-9, (t.name, a, b)

    def row(label: str, runs: list) -> tuple[float, float]:
        wall, fwd, req = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"{label:30s}{wall:10.3f}{fwd:10.3f}{req:10.3f}{wall - req:10.3f}{wall - fwd:10.3f}")
        return wall, fwd

    print(f"\n{'median s per evaluation':30s}{'wall':>10s}{'forward':>10s}{'requests':>10s}", end="")
    print(f"{'lm-eval':>10s}{'!forward':>10s}")
    w_ours, f_ours = row("soce lm_eval (tasks reused)", mine)
    w_plain, _ = row("lm_eval.simple_evaluate", theirs)
    print("(requests: inside the model's request calls; lm-eval: wall - requests; !forward: wall - forward)")
    print(f"\nratio simple_evaluate / soce: {w_plain / w_ours:.2f}x")
    print(
        f"soce overhead beyond forward passes: {w_ours - f_ours:.3f} s per evaluation "
        f"({100 * (w_ours - f_ours) / w_ours:.1f}% of its wall time; goal: at most 10%)"
    )
    print(f"first soce evaluation (builds the tasks): {first_wall:.3f} s")

    from soce.score_cache import score_checkpoint

    score_checkpoint(evaluator, checkpoint, suite, args.split)  # fills the cache if empty
    probe = [sys.executable, "-c", _HIT_PROBE, str(suite_file), str(checkpoint), args.split]
    got = subprocess.run(probe, capture_output=True, text=True, env=os.environ.copy(), check=True)
    hit = json.loads(got.stdout.strip().splitlines()[-1])
    print(
        f"score cache hit in a fresh process: first {1000 * hit['first']:.1f} ms, "
        f"then {1000 * hit['warm']:.1f} ms; {hit['cached']}/{len(suite.tasks)} tasks cached; "
        f"heavy modules imported: {hit['heavy'] or 'none'}"
    )


if __name__ == "__main__":
    main()
