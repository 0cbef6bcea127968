"""Where a weight-search trial's time goes: merging into the resident model, evaluation, bookkeeping.

Runs N TPE trials on the demo zoo's experts with the study in an SQLite Optuna storage, as
`soce run` does (the loop on a copy in memory, finished trials stored by a writer thread), and
splits the wall time of the whole search into merge (weights into the resident model), evaluation
(lm-eval tasks on the model) and the rest (sampler, storage, ask/tell). Side by side, the same
trials asked and evaluated one by one on the stored study, as the service's trial tasks do (every
parameter, attribute and tell a commit in the trial's path). Target: merge plus bookkeeping at most
5% of a trial in `soce run`.

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
    categories = inputs.suite.category_names
    config = SearchConfig(sampler="tpe", n_trials=args.trials, seed=0)
    with tempfile.TemporaryDirectory() as tmp:

        def search_in(name: str) -> WeightSearch:
            storage = optuna_storage(url=f"sqlite:///{tmp}/{name}.sqlite")
            space = SearchSpace(experts)
            return WeightSearch(space, categories, resident, config, storage=storage, study_name="bench")

        # as `soce run` does: the loop in memory, each finished trial stored whole in one transaction
        search = search_in("optuna")
        started = time.perf_counter()
        result = search.run()
        wall = time.perf_counter() - started
        # as a service trial task does: ask and evaluate on the stored study, every write in the path
        stored = search_in("optuna-stored")
        started = time.perf_counter()
        stored.begin(lambda t: True)
        for _ in range(args.trials):
            (number,) = stored.ask_trials(1)
            stored.evaluate_trial(number)
        stored_wall = time.perf_counter() - started
        stored_result = stored.result()
    params = sum(p.numel() for p in resident.model.parameters())
    print(f"{args.trials} TPE trials of {len(experts)} experts ({params / 1e6:.2f} M parameters)")
    fractions = {}
    for label, res, secs_all in (
        ("in-process loop (soce run)", result, wall),
        ("trial by trial on the stored study (service trial tasks)", stored_result, stored_wall),
    ):
        n = len(res.history)
        merge = sum(t.timings.get("merge", 0.0) for t in res.history)
        evaluate = sum(t.timings.get("evaluate", 0.0) for t in res.history)
        rest = secs_all - merge - evaluate
        fractions[label] = (merge + rest) / secs_all
        print(f"\n{label}: {secs_all:.2f} s, {secs_all / n * 1000:.1f} ms a trial")
        for name, secs in (("merge", merge), ("evaluation", evaluate), ("bookkeeping", rest)):
            print(f"  {name:12s} {secs / n * 1000:8.1f} ms  {secs / secs_all:6.1%}")
        print(f"  merge + bookkeeping: {fractions[label]:.1%} of a trial")
    loop, one_by_one = fractions.values()
    print(
        f"\nsoce run: merge + bookkeeping {loop:.1%} of a trial (target <= 5%); "
        f"trial by trial on the stored study {one_by_one:.1%} ({one_by_one / loop:.1f}x)"
    )


if __name__ == "__main__":
    main()
