"""How many evaluations each sampler needs to match the paper's grid, and what its soup scores on test.

On the demo zoo's category experts (3 or 4), the whole grid (0.1..0.9 step 0.1 summing to 1, plus
uniform) is evaluated once; then TPE and CMA-ES run with several seeds and a budget of a third of
the grid, and the learned soup (gradient ascent on the dev log-likelihood of the answers, then its
default 6 points evaluated as trials; deterministic, so one run). Printed per run: evaluations until
the best dev objective so far is within 0.5 points of the grid's best (and the grid's own count in its
seeded order), the best dev objective, the test average of the final soup and the wall time (for the
learned soup including its gradient path). Everything is measured in this one run, side by side.

    python bench/search_efficiency.py [--zoo DIR] [--size demo] [--seeds 3] [--experts 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import _pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, help="a zoo folder; default: the demo zoo (built if missing)")
    ap.add_argument("--size", default="demo")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--experts", type=int, default=4, choices=[3, 4], help="at most this many experts")
    ap.add_argument("--tolerance", type=float, default=0.005, help="'reached' = within this of the grid best")
    args = ap.parse_args()
    _pipeline.quiet()

    import optuna

    from optimizer.learned import LearnedSettings
    from optimizer.samplers import SearchConfig
    from optimizer.search import WeightSearch
    from optimizer.space import SearchSpace, SoupWeights
    from soce.schemas.scores import SuiteScores

    zoo = _pipeline.ensure_zoo(args.zoo, args.size)
    inputs, dev, analysis, resident = _pipeline.prepare(zoo, max_experts=args.experts)
    experts = tuple(analysis.experts.candidates)
    suite = inputs.suite
    print(f"zoo {zoo}: {len(dev.candidates)} candidates, experts {', '.join(experts)}")
    cache: dict[tuple, dict[str, float]] = {}

    def evaluate(weights: SoupWeights, categories):
        key = weights.key(digits=9)
        if key not in cache:
            cache[key] = resident(weights, suite.category_names)
        return {c: cache[key][c] for c in categories}

    def test_average(weights: SoupWeights) -> float:
        tasks, _ = resident.score_tasks(weights, "test")
        return SuiteScores.aggregate(suite, "test", candidate="x", evaluator="x", tasks=tasks).average

    def run(sampler: str, seed: int, n_trials: int | None):
        calls = {"n": 0}

        def counted(w, cats):
            calls["n"] += 1
            return evaluate(w, cats)

        s = WeightSearch(
            SearchSpace(experts),
            suite.category_names,
            counted,
            SearchConfig(sampler=sampler, n_trials=n_trials, seed=seed),
            storage=optuna.storages.InMemoryStorage(),
            study_name=f"{sampler}-{seed}",
            learn=lambda space: resident.learned_path(space, LearnedSettings()),  # for `learned` only
        )
        started = time.perf_counter()
        result = s.run()
        return result, time.perf_counter() - started

    grid, grid_s = run("grid", 0, None)
    grid_best = grid.best.objective
    budget = max(1, len(grid.history) // 3)
    print(f"grid: {len(grid.history)} points, best dev objective {grid_best:.4f} ({grid_s:.0f} s)")
    print(f"budget for the other samplers: {budget} evaluations (a third of the grid)\n")

    def reached(result) -> int | None:
        for i, t in enumerate(result.history, start=1):
            if t.objective is not None and t.objective >= grid_best - args.tolerance:
                return i
        return None

    def row(name: str, seed: int, r, seconds: float):
        return (
            name,
            seed,
            reached(r),
            len(r.history),
            r.best.objective,
            test_average(r.best.weights),
            seconds,
        )

    rows = []
    for seed in range(args.seeds):
        g, seconds = run("grid", seed, None)  # from the cache: the grid in another seeded order
        rows.append(row("grid", seed, g, seconds))
    for sampler in ("tpe", "cmaes"):
        for seed in range(args.seeds):
            r, seconds = run(sampler, seed, budget)
            rows.append(row(sampler, seed, r, seconds))
    r, seconds = run("learned", 0, None)  # its default points; the path does not depend on the seed
    rows.append(row("learned", 0, r, seconds))
    head = ("sampler", "seed", "evals to grid best", "evals", "best dev", "soup test", "wall s")
    print(
        f"{head[0]:8s} {head[1]:>4s} {head[2]:>19s} {head[3]:>6s} {head[4]:>9s} {head[5]:>10s} {head[6]:>7s}"
    )
    for name, seed, hit, n, best, test, seconds in rows:
        hit_s = str(hit) if hit is not None else f"not in {n}"
        print(f"{name:8s} {seed:4d} {hit_s:>19s} {n:6d} {best:9.4f} {test:10.4f} {seconds:7.1f}")
    print("(grid after its first run, and the uniform point of every run, come from the evaluation cache)\n")
    grid_rows = [r for r in rows if r[0] == "grid"]
    grid_test = grid_rows[0][5]
    for name in ("grid", "tpe", "cmaes", "learned"):
        mine = [r for r in rows if r[0] == name]
        hits = [r[2] for r in mine if r[2] is not None]
        frac = f"{statistics.median(hits) / len(grid.history):.2f} of the grid" if hits else "never"
        print(
            f"{name:6s}: reached the grid best (±{args.tolerance * 100:.1f} pt) "
            f"in {len(hits)}/{len(mine)} runs, "
            f"median {statistics.median(hits) if hits else float('nan'):.0f} evaluations ({frac}); "
            f"test average {statistics.mean(r[5] for r in mine):.4f} vs grid {grid_test:.4f} "
            f"(ratio {statistics.mean(r[5] for r in mine) / grid_test:.3f})"
        )
    tpe = [r for r in rows if r[0] == "tpe"]
    learned = next(r for r in rows if r[0] == "learned")
    dev, test, wall = (statistics.mean(r[i] for r in tpe) for i in (4, 5, 6))
    print(
        f"\nlearned vs tpe (mean of {len(tpe)} seeds): best dev {learned[4]:.4f} vs {dev:.4f} "
        f"(ratio {learned[4] / dev:.3f}), soup test {learned[5]:.4f} vs {test:.4f} "
        f"(ratio {learned[5] / test:.3f}), wall {learned[6]:.1f} s vs {wall:.1f} s "
        f"(ratio {learned[6] / wall:.2f})"
    )


if __name__ == "__main__":
    main()
