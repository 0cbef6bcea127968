"""Does the zoo's design give the method room on every seed, not only on the demo's?

Builds (or reuses) the zoo for each seed under the data folder, two builds at a time (each trains on
one thread), scores every candidate on dev and prints, per seed, the dev matrix and per category:
the specialist's lead over the best other candidate, and the lowest and highest score. A category
passes when its specialist leads by at least --lead points, no candidate reaches --saturated, and
some candidate reaches --learnable. Only dev is read.

    python bench/zoo_quality.py [--size demo] [--seeds 0 1 2] [--pool default] [--jobs 2]
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _pipeline


def build(size: str, seed: int, pool: str) -> Path:
    from workers.demo import ensure_zoo
    from workers.progress import Stages

    return ensure_zoo(size, seed, Stages(quiet=True), pool=pool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="demo")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pool", default="default", help="the zoo's candidate pool: default or gentle")
    ap.add_argument("--jobs", type=int, default=2, help="zoo builds at a time")
    ap.add_argument("--lead", type=float, default=2.0, help="points a specialist must lead its category by")
    ap.add_argument("--saturated", type=float, default=95.0, help="no candidate may reach this score")
    ap.add_argument("--learnable", type=float, default=30.0, help="some candidate must reach this score")
    args = ap.parse_args()
    _pipeline.quiet()

    from soce.schemas.run import RunRecipe
    from workers.pipeline import open_run, score_step

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        built = pool.map(lambda s: build(args.size, s, args.pool), args.seeds)
        zoos = dict(zip(args.seeds, built, strict=True))
    passed = 0
    for seed, zoo in zoos.items():
        recipe = RunRecipe(
            candidates=[str(zoo / "candidates" / "*")], suite=str(zoo / "suite.yaml"), output="/dev/null"
        )
        dev = score_step(open_run(recipe), "dev")
        rows = {c: [100 * v for v in vals] for c, vals in zip(dev.candidates, dev.values, strict=True)}
        print(f"\nseed {seed} ({zoo}), dev, points")
        print(f"{'candidate':<22}" + "".join(f"{c:>12}" for c in dev.categories))
        for cand, vals in rows.items():
            print(f"{cand:<22}" + "".join(f"{v:>12.1f}" for v in vals))
        ok_all = True
        for j, cat in enumerate(dev.categories):
            col = {c: v[j] for c, v in rows.items()}
            specialist = f"{cat}-expert"
            others = [v for c, v in col.items() if c != specialist]
            lead = col[specialist] - max(others) if specialist in col else float("nan")
            low, high = min(col.values()), max(col.values())
            ok = lead >= args.lead and high < args.saturated and high >= args.learnable
            ok_all &= ok
            print(
                f"  {cat:<12} specialist lead {lead:+5.1f}  range {low:5.1f} to {high:5.1f}  "
                f"{'pass' if ok else 'FAIL'}"
            )
        passed += ok_all
        print(f"  seed {seed}: {'every category passes' if ok_all else 'some category fails'}")
    rule = f"lead >= {args.lead:g}, < {args.saturated:g}, >= {args.learnable:g}"
    print(f"\n{passed} of {len(zoos)} seeds pass ({rule})")


if __name__ == "__main__":
    main()
