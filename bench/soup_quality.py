"""Does the final model beat the best single candidate on test, and does it say so when it does not?

For each zoo seed and pool, runs the whole pipeline on the same candidates, side by side:
- `paper`: the SoCE paper's plain recipe: the category experts only, their weights searched on all of
  dev, and the best trial is the result (no selection part, no decision; always the soup);
- `ours`: the experts plus the best single candidate, the search (TPE) on the search part of dev, and
  the final model (a soup or the best single candidate) chosen on the selection part;
- `learned`: `ours` with the learned soup instead of TPE (Adam on the mixing logits against the dev
  log-likelihood of the answers; its default 6 points of the path are the trials).
Prints per run the test average of the final model, the best single candidate, the greedy and the
uniform soup, the final model's paired bootstrap interval against the best single candidate on
test, and the decision; then, per pool, how often the final model was significantly better or worse,
and learned against TPE: the search's best dev objective (on the search part), the final model's test
average and the run's wall time. Only test scores are reported as results; nothing is tuned on them.

    python bench/soup_quality.py [--size demo] [--seeds 0 1 2 3 4] [--pools default gentle] [--trials 30]
        [--variants paper ours learned]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import _pipeline


def zoo_for(size: str, seed: int, pool: str) -> Path:
    from workers.demo import ensure_zoo
    from workers.progress import Stages

    return ensure_zoo(size, seed, Stages(quiet=True), pool=pool)


def run(zoo: Path, out: Path, variant: str, trials: int) -> dict[str, Any]:
    from soce.schemas.run import RunRecipe
    from workers.local import run_local

    paper = variant == "paper"
    learned = variant == "learned"
    recipe = RunRecipe(
        name=f"bench-{variant}",
        candidates=[str(zoo / "candidates" / "*")],
        suite=str(zoo / "suite.yaml"),
        sampler="learned" if learned else "tpe",
        n_trials=None if learned else trials,
        seed=0,
        include_best_single=not paper,
        selection_fraction=0.0 if paper else 0.5,
        output=str(out),
    )
    return run_local(recipe).report.as_json()


def paper_result(zoo: Path, report: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The paper's result: the best trial on dev, its test average and interval against the best single."""
    from optimizer.space import SoupWeights
    from soce.schemas.run import RunRecipe
    from workers.held_out import intervals, test_scores
    from workers.pipeline import open_run
    from workers.resident import ResidentSoup

    history = [t for t in report["search"]["history"] if t["number"] == report["search"]["best_trial"]]
    weights = history[0]["weights"]
    recipe = RunRecipe(candidates=[str(zoo / "candidates" / "*")], suite=str(zoo / "suite.yaml"))
    inputs = open_run(recipe)
    best = report["best_single"]
    resident = ResidentSoup({k: inputs.paths[k] for k in {*weights, best}}, inputs.evaluator, inputs.suite)
    soup = test_scores(resident, SoupWeights(tuple(weights), tuple(weights.values())), inputs.suite, "soup")
    single = test_scores(resident, resident.single(best), inputs.suite, "single")
    iv = intervals(soup, single, inputs.suite, iterations=2000, level=0.95, seed=0)
    return soup.scores.average, iv.as_dict()


def row(
    seed: int, pool: str, variant: str, report: dict[str, Any], final: float, iv: dict, seconds: float
) -> dict:
    b = report["baselines"]
    return {
        "seed": seed,
        "pool": pool,
        "variant": variant,
        "dev": report["search"]["best_dev_objective"],
        # the search's own time (the learned soup's gradient path included): scores are cached by the
        # variant that runs first, so a whole run's time would favour the later ones
        "seconds": report["seconds"].get("search", 0.0) + report["seconds"].get("learn", 0.0),
        "run_seconds": seconds,
        "final": final,
        "best_single": b["best_single"]["test_average"],
        "greedy": b["greedy"]["test_average"],
        "uniform": b["uniform"]["test_average"],
        "diff": iv["diff"],
        "low": iv["low"],
        "high": iv["high"],
        "decision": "soup" if variant == "paper" else report["decision"]["kind"],
        "model": "best trial" if variant == "paper" else report["decision"]["source"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="demo")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--pools", nargs="+", default=["default", "gentle"])
    ap.add_argument("--trials", type=int, default=30, help="search trials per run (the demo's 30)")
    ap.add_argument("--variants", nargs="+", default=["paper", "ours", "learned"])
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    _pipeline.quiet()
    from soce.config import get_settings

    rows = []
    root = get_settings().data_dir / "bench" / "soup_quality"
    for pool in args.pools:
        for seed in args.seeds:
            started = time.perf_counter()
            zoo = zoo_for(args.size, seed, pool)
            for variant in args.variants:
                run_started = time.perf_counter()
                report = run(zoo, root / f"{args.size}-{pool}-seed{seed}-{variant}", variant, args.trials)
                seconds = time.perf_counter() - run_started
                if variant == "paper":
                    final, iv = paper_result(zoo, report)
                else:
                    final = report["decision"]["test_average"]
                    iv = report["decision"]["vs_best_single"]
                rows.append(row(seed, pool, variant, report, final, iv, seconds))
                r = rows[-1]
                print(
                    f"{pool:8s} seed {seed} {variant:7s}: final {100 * r['final']:5.1f} ({r['model']}), "
                    f"best single {100 * r['best_single']:5.1f}, {100 * r['diff']:+.1f} "
                    f"[{100 * r['low']:+.1f}, {100 * r['high']:+.1f}], decision {r['decision']}",
                    flush=True,
                )
            print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    print("\ntest split, points; interval: final model minus best single candidate, paired bootstrap, 95%")
    head = (
        f"{'pool':8s} {'seed':>4s} {'variant':7s} {'final':>6s} {'best1':>6s} {'greedy':>6s} "
        f"{'unif':>6s} {'final - best single':>22s}  decision (model)"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        iv = f"{100 * r['diff']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]"
        print(
            f"{r['pool']:8s} {r['seed']:4d} {r['variant']:7s} {100 * r['final']:6.1f} "
            f"{100 * r['best_single']:6.1f} {100 * r['greedy']:6.1f} {100 * r['uniform']:6.1f} "
            f"{iv:>22s}  {r['decision']} ({r['model']})"
        )
    print()
    for pool in args.pools:
        for variant in args.variants:
            got = [r for r in rows if r["pool"] == pool and r["variant"] == variant]
            better = sum(r["low"] > 0 for r in got)
            worse = sum(r["high"] < 0 for r in got)
            soups = sum(r["decision"] == "soup" for r in got)
            print(
                f"{pool:8s} {variant:5s}: significantly better than the best single on {better} of "
                f"{len(got)} seeds, significantly worse on {worse}; decision soup on {soups}"
            )
    if {"ours", "learned"} <= set(args.variants):
        print("\nlearned vs tpe (`ours`): best dev objective (search part), final test average, search time")
        for r in [r for r in rows if r["variant"] == "learned"]:
            t = next(
                x for x in rows if (x["pool"], x["seed"], x["variant"]) == (r["pool"], r["seed"], "ours")
            )
            print(
                f"{r['pool']:8s} seed {r['seed']}: "
                f"dev {100 * r['dev']:5.1f} vs {100 * t['dev']:5.1f} (ratio {_ratio(r['dev'], t['dev'])}), "
                f"test {100 * r['final']:5.1f} vs {100 * t['final']:5.1f} "
                f"(ratio {_ratio(r['final'], t['final'])}), "
                f"search {r['seconds']:.0f} s vs {t['seconds']:.0f} s "
                f"(ratio {_ratio(r['seconds'], t['seconds'])})"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def _ratio(a: float, b: float) -> str:
    """a / b to three places, or n/a when b is 0 (a search continued from a stored study took no time)."""
    return f"{a / b:.3f}" if b else "n/a"


if __name__ == "__main__":
    main()
