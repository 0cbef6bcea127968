"""Where a weight-search trial's time goes: merging into the resident model, evaluation, bookkeeping.

Runs N TPE trials on the demo zoo's experts with the study in an SQLite Optuna storage (as
`soce run` does) and splits the wall time of the whole search into merge (weights into the
resident model), evaluation (lm-eval tasks on the model) and the rest (sampler, storage, ask/tell).
Target: merge plus bookkeeping at most 5% of a trial.

    python bench/trial_parts.py [--zoo DIR] [--size demo] [--trials 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, help="a zoo folder; default: the demo zoo (built if missing)")
    ap.add_argument("--size", default="demo")
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    _pipeline.quiet()

    from optimizer.search import SearchConfig, WeightSearch
    from optimizer.space import SearchSpace
    from workers.pipeline import optuna_storage

    zoo = _pipeline.ensure_zoo(args.zoo, args.size)
    inputs, _, analysis, resident = _pipeline.prepare(zoo, max_experts=4)
    experts = tuple(analysis.experts.candidates)
    resident(resident.uniform(experts), inputs.suite.category_names)  # tasks built, caches warm
    with tempfile.TemporaryDirectory() as tmp:
        search = WeightSearch(
            SearchSpace(experts),
            inputs.suite.category_names,
            resident,
            SearchConfig(sampler="tpe", n_trials=args.trials, seed=0),
            storage=optuna_storage(url=f"sqlite:///{tmp}/optuna.sqlite"),
            study_name="bench",
        )
        started = time.perf_counter()
        result = search.run()
        wall = time.perf_counter() - started
    merge = sum(t.timings.get("merge", 0.0) for t in result.history)
    evaluate = sum(t.timings.get("evaluate", 0.0) for t in result.history)
    rest = wall - merge - evaluate
    n = len(result.history)
    params = sum(p.numel() for p in resident.model.parameters())
    print(f"{n} trials of {len(experts)} experts ({params / 1e6:.2f} M parameters), {wall:.2f} s in all")
    print(f"per trial: {wall / n * 1000:8.1f} ms")
    for name, secs in (("merge", merge), ("evaluation", evaluate), ("bookkeeping", rest)):
        print(f"  {name:12s} {secs / n * 1000:8.1f} ms  {secs / wall:6.1%}")
    print(f"merge + bookkeeping: {(merge + rest) / wall:.1%} of a trial (target <= 5%)")


if __name__ == "__main__":
    main()
