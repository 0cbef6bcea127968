"""soce merge against mergekit-yaml on four related 168M-parameter Llama checkpoints.

Both tools run as separate processes, alternating, on the same inputs (warm in the page cache)
with the same linear weights. Printed: median wall time and peak RSS of each, the ratios, the
largest absolute difference between the two soups, and the I/O floor (reading every input once
and writing one output of the same size). soce runs with an empty digest cache every time, so
its numbers include hashing all inputs. Also printed: the in-memory merge rate of merge_into.

    python bench/merge_vs_mergekit.py [--runs 3] [--dtypes float32,bfloat16] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from soce.zoo import LlamaShape, make_related_checkpoints

SHAPE = LlamaShape(hidden=1024, layers=8, intermediate=2816, vocab=32000, heads=16, kv_heads=16)
WEIGHTS = [0.4, 0.3, 0.2, 0.1]
BIN = Path(sys.executable).parent


def build(root: Path, dtype: str) -> list[Path]:
    """The four input folders, built in a child process so this one stays small.

    A forked child's peak RSS starts from its parent's, so a parent holding gigabytes of
    generated weights would inflate every measurement taken after it.
    """
    folders = [root / f"candidate-{k}" for k in range(4)]
    if not all((f / "config.json").is_file() for f in folders):
        shutil.rmtree(root, ignore_errors=True)
        params = sum(int(np.prod(s)) for _, s in SHAPE.tensors()) / 1e6
        print(f"building 4 x {params:.0f}M-parameter {dtype} checkpoints in {root}", flush=True)
        subprocess.run([sys.executable, __file__, "--build", str(root), "--build-dtype", dtype], check=True)
    os.sync()  # no writeback of freshly built inputs during the timed runs
    return folders


# Peak RSS is read in a small launcher process: a child's ru_maxrss starts from the memory of the
# process it was forked from, so measuring directly from this one (which loads soups to compare
# them) would add this process's size to both tools.
_LAUNCHER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": p.returncode, "wall": wall, "rss": rss, "stderr": p.stderr[-4000:]}))
"""


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes of one child process."""
    got = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], env=env, capture_output=True, text=True)
    result = json.loads(got.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result['stderr']}")
    return result["wall"], result["rss"]


def io_floor(inputs: list[Path], out_bytes: int, scratch: Path) -> float:
    """Seconds to read every input file once and write `out_bytes` to a new file."""
    buf = bytearray(64 * 1024 * 1024)
    view = memoryview(buf)
    started = time.perf_counter()
    for folder in inputs:
        for f in sorted(folder.glob("*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(view):
                    pass
    with open(scratch, "wb", buffering=0) as fh:
        left = out_bytes
        while left > 0:
            left -= fh.write(view[: min(left, len(buf))])
    took = time.perf_counter() - started
    scratch.unlink()
    return took


def load(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    out: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        for k, v in load_file(f).items():
            out[k] = v.float().numpy()
    return out


def max_abs_diff(a: Path, b: Path) -> float:
    ta, tb = load(a), load(b)
    if set(ta) != set(tb):
        raise SystemExit(f"the soups have different tensors: {sorted(set(ta) ^ set(tb))[:5]}")
    return max(float(np.max(np.abs(ta[k] - tb[k]))) for k in ta)


def in_memory_rate(inputs: list[Path]) -> tuple[float, float]:
    """GB of expert tensors merged per second by merge_into on this machine (median of 5)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from soce.checkpoints import Checkpoint
    from soce.merging.in_memory import load_experts, merge_into

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ckpts = [Checkpoint.open(p) for p in inputs]
    experts = load_experts(ckpts, device=device)
    config = AutoConfig.from_pretrained(inputs[0])
    model = AutoModelForCausalLM.from_config(config).to(device=device, dtype=config.dtype)
    nbytes = sum(c.nbytes for c in ckpts)
    times = []
    for _ in range(6):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        merge_into(model, experts, WEIGHTS)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return nbytes / statistics.median(times[1:]) / 1e9, statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "soce-bench-merge")
    ap.add_argument("--skip-in-memory", action="store_true")
    ap.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--build-dtype", help=argparse.SUPPRESS)
    ap.add_argument("--in-memory", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.in_memory:
        print(json.dumps(in_memory_rate([args.in_memory / f"candidate-{k}" for k in range(4)])))
        return
    if args.build:
        make_related_checkpoints(args.build, 4, shape=SHAPE, dtype=args.build_dtype, seed=0, tokenizer=False)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    summary = []
    for dtype in args.dtypes.split(","):
        inputs = build(args.workdir / dtype, dtype)
        recipe = args.workdir / f"soce-{dtype}.yml"
        recipe.write_text(
            json.dumps(
                {
                    "method": "linear",
                    "candidates": [
                        {"path": str(p), "weight": w} for p, w in zip(inputs, WEIGHTS, strict=True)
                    ],
                }
            )
        )
        mk_config = args.workdir / f"mergekit-{dtype}.yml"
        mk_config.write_text(
            json.dumps(
                {
                    "merge_method": "linear",
                    "models": [
                        {"model": str(p), "parameters": {"weight": w}}
                        for p, w in zip(inputs, WEIGHTS, strict=True)
                    ],
                    "dtype": dtype,
                }
            )
        )
        outs = {
            "soce": args.workdir / f"out-soce-{dtype}",
            "mergekit": args.workdir / f"out-mergekit-{dtype}",
        }
        results: dict[str, list[tuple[float, int]]] = {"soce": [], "mergekit": []}
        for r in range(args.runs):
            for tool in ("soce", "mergekit"):
                shutil.rmtree(outs[tool], ignore_errors=True)
                if tool == "soce":
                    data = Path(tempfile.mkdtemp(prefix="soce-data-"))  # cold digest cache every run
                    cmd = [str(BIN / "soce"), "merge", str(recipe), str(outs[tool]), "--quiet"]
                    results[tool].append(run(cmd, {**env, "SOCE_DATA_DIR": str(data)}))
                    shutil.rmtree(data)
                else:
                    cmd = [str(BIN / "mergekit-yaml"), str(mk_config), str(outs[tool]), "--quiet"]
                    results[tool].append(run(cmd, env))
                wall, rss = results[tool][-1]
                print(f"  {dtype} run {r + 1} {tool:9s} {wall:7.2f} s  {rss / 2**20:8.0f} MiB", flush=True)
        out_bytes = sum(f.stat().st_size for f in outs["soce"].glob("*.safetensors"))
        floor = io_floor(inputs, out_bytes, args.workdir / "floor.bin")
        diff = max_abs_diff(outs["soce"], outs["mergekit"])
        med = {
            t: (statistics.median(w for w, _ in v), statistics.median(m for _, m in v))
            for t, v in results.items()
        }
        summary.append(
            (dtype, med, floor, diff, sum(f.stat().st_size for p in inputs for f in p.glob("*.safetensors")))
        )
        if not args.skip_in_memory:
            # in a child process, so the experts it loads never count towards a later measurement
            got = subprocess.run(
                [sys.executable, __file__, "--in-memory", str(args.workdir / dtype)],
                check=True,
                capture_output=True,
                text=True,
            )
            summary[-1] += tuple(json.loads(got.stdout.strip().splitlines()[-1]))
    print()
    print(f"{'dtype':10s}{'tool':10s}{'median wall s':>15s}{'peak RSS MiB':>14s}")
    for dtype, med, floor, diff, in_bytes, *mem in summary:
        for tool, (wall, rss) in med.items():
            print(f"{dtype:10s}{tool:10s}{wall:15.2f}{rss / 2**20:14.0f}")
        ratio_w = med["soce"][0] / med["mergekit"][0]
        ratio_m = med["soce"][1] / med["mergekit"][1]
        print(f"{dtype:10s}ratio soce/mergekit: wall {ratio_w:.3f}, peak RSS {ratio_m:.3f}")
        print(f"{dtype:10s}max |soce - mergekit| = {diff:.3g}")
        print(
            f"{dtype:10s}I/O floor (read {in_bytes / 1e9:.2f} GB, write one output): {floor:.2f} s;"
            f" soce is {med['soce'][0] / floor:.2f}x the floor"
        )
        if mem:
            print(f"{dtype:10s}in-memory merge_into: {mem[0]:.2f} GB/s ({mem[1]:.3f} s per merge)")


if __name__ == "__main__":
    main()
