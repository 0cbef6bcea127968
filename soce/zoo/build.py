"""`soce zoo build`: data, lm-eval tasks, a suite, a pretrained base and fine-tuned candidates.

Layout of a zoo folder:
    suite.yaml                  the SuiteSpec (categories of lm-eval tasks, dev/test splits)
    tasks/<task>.yaml           lm-eval task configs reading data/<task>/{dev,test}.jsonl
    data/<task>/{pretrain,train,dev,test}.jsonl   (pretrain: the base's easy-range examples)
    base/                       the pretrained base (Hugging Face folder)
    instruct/                   the base trained briefly on every category: the candidates' parent
    candidates/<name>/          fine-tunes of the instruct model, each with its own category mixture
    zoo.json                    what was built and how (sizes, seeds, mixtures, losses)
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from soce.errors import OutputExistsError
from soce.zoo.tasks import CATEGORIES, TASKS, Example, make_splits
from soce.zoo.train import REPLAY, Batcher, TrainPlan, train

log = logging.getLogger(__name__)

ZOO_VERSION = 7  # 5: the base learns easy ranges only; 6: an instruct model, replay, pools;
# 7: the default pool: broad fine-tunes at a constant learning rate (noisy endpoints)

POOLS: tuple[str, ...] = ("default", "gentle")


@dataclass(frozen=True)
class ZooSize:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    batch: int
    base_steps: int
    base_lr: float
    instruct_steps: int
    instruct_lr: float
    finetune_steps: int
    finetune_lr: float
    gentle_steps: int
    gentle_lr: float
    n_train: int
    n_dev: int
    n_test: int
    extra_candidates: bool  # the demo zoo adds a third two-category candidate


SIZES: dict[str, ZooSize] = {
    "tiny": ZooSize(
        hidden=48,
        layers=2,
        intermediate=128,
        heads=4,
        batch=32,
        base_steps=400,
        base_lr=3e-3,
        instruct_steps=80,
        instruct_lr=2e-3,
        finetune_steps=60,
        finetune_lr=2e-3,
        gentle_steps=30,
        gentle_lr=3e-4,
        n_train=800,
        n_dev=40,
        n_test=40,
        extra_candidates=False,
    ),
    "demo": ZooSize(
        hidden=64,
        layers=2,
        intermediate=192,
        heads=4,
        batch=48,
        base_steps=4000,
        base_lr=3e-3,
        instruct_steps=600,
        instruct_lr=2e-3,
        finetune_steps=400,
        finetune_lr=2e-3,
        gentle_steps=150,
        gentle_lr=3e-4,
        n_train=2000,
        n_dev=300,
        n_test=300,
        extra_candidates=True,
    ),
}

# the gentle pool's batches: 20% replay of the base's pretraining data and at least 10% of each category
REPLAY_SHARE = 0.2
OTHER_SHARE = 0.1
# the default pool's batches: 15% replay and 15% of each category not emphasised (so a one-category
# emphasis is 40%, a two-category one 27.5% each)
BROAD_REPLAY_SHARE = 0.15
BROAD_OTHER_SHARE = 0.15


def _mixture(
    focus: tuple[str, ...], *, replay: float = REPLAY_SHARE, other: float = OTHER_SHARE
) -> dict[str, float]:
    """A post-training mixture: `focus` categories share what the replay and the others leave."""
    rest = 1.0 - replay - other * (len(CATEGORIES) - len(focus))
    mix = {c: (rest / len(focus) if c in focus else other) for c in CATEGORIES}
    mix[REPLAY] = replay
    return {k: round(v, 6) for k, v in mix.items()}


def _broad_mixture(focus: tuple[str, ...]) -> dict[str, float]:
    """The default pool's mixture: every category and replay, `focus` emphasised."""
    return _mixture(focus, replay=BROAD_REPLAY_SHARE, other=BROAD_OTHER_SHARE)


def plans(size: ZooSize, seed: int, pool: str = "default") -> tuple[TrainPlan, TrainPlan, list[TrainPlan]]:
    """The base's plan, the instruct model's and the candidates' (fine-tunes of the instruct model).

    The base learns the easy range of every task; the instruct model, trained briefly from it on the
    full range of every category (with replay of the base's data), is good at a part of it, like a
    general instruct model; candidates are fine-tunes of the instruct model, as in the SoCE paper.
    Every candidate keeps the instruct model's abilities (replay and a share of every category).
    The default pool: broad fine-tunes, each with its own emphasis (one category, or two), seed and
    data order, at a constant learning rate (lr_floor=1.0, like checkpoints taken before the rate
    decays): each ends at a noisy point around the same basin, and their average lands nearer its
    centre, better than any of them (the SWA / model-soup mechanism). The gentle pool: short,
    low-rate specialists and a generalist (cosine decay), close to their parent, where a soup gains
    little over the best of them.
    """
    if pool not in POOLS:
        raise ValueError(f"unknown zoo pool {pool!r}; use one of {', '.join(POOLS)}")
    uniform = {c: 1.0 for c in CATEGORIES}
    base = TrainPlan(
        "base", uniform, size.base_steps, size.base_lr, seed, "pretrained on the easy range of every task"
    )
    broad = {**{c: 0.6 / len(CATEGORIES) for c in CATEGORIES}, REPLAY: 0.4}
    instruct = TrainPlan(
        "instruct",
        broad,
        size.instruct_steps,
        size.instruct_lr,
        seed + 100,
        "from the base: the full range of every category (15% each) and 40% replay of the base's data",
    )
    # (first category, second, seed offset) of the default pool's two-category candidates
    pairs = [(0, 1, 11), (1, 2, 12)] + ([(2, 3, 13)] if size.extra_candidates else [])
    if pool == "default":
        return base, instruct, _broad_candidates(size, seed, pairs)
    steps, lr = size.gentle_steps, size.gentle_lr
    cands = _specialists(seed, steps, lr, replay=REPLAY_SHARE, other=OTHER_SHARE)
    mix = _mixture(CATEGORIES)
    cands.append(
        TrainPlan(
            "generalist",
            mix,
            2 * steps,
            lr,
            seed + 20,
            f"every category evenly ({mix[CATEGORIES[0]]:.0%} each), {REPLAY_SHARE:.0%} replay, "
            "twice the steps",
        )
    )
    return base, instruct, cands


def _specialists(
    seed: int, steps: int, lr: float, *, replay: float, other: float, note: str = "", **plan: Any
) -> list[TrainPlan]:
    """One candidate per category (`<category>-expert`), that category emphasised."""
    out = []
    for k, cat in enumerate(CATEGORIES):
        mix = _mixture((cat,), replay=replay, other=other)
        what = f"{mix[cat]:.0%} {cat}, {other:.0%} each other category, {replay:.0%} replay{note}"
        out.append(TrainPlan(f"{cat}-expert", mix, steps, lr, seed + 1 + k, what, **plan))
    return out


def _broad_candidates(size: ZooSize, seed: int, pairs: list[tuple[int, int, int]]) -> list[TrainPlan]:
    """The default pool: broad fine-tunes at a constant rate, each with its own seed and data order.

    One per category (40% of it, 15% of each other); one per pair of neighbouring categories (27.5%
    of each of the pair, 15% of each other). All with 15% replay.
    """
    steps, lr = size.finetune_steps, size.finetune_lr
    cands = _specialists(
        seed,
        steps,
        lr,
        replay=BROAD_REPLAY_SHARE,
        other=BROAD_OTHER_SHARE,
        note=", constant learning rate",
        lr_floor=1.0,
    )
    for i, j, offset in pairs:
        a, b = CATEGORIES[i], CATEGORIES[j]
        mix = _broad_mixture((a, b))
        other = mix[next(c for c in CATEGORIES if c not in (a, b))]
        cands.append(
            TrainPlan(
                f"{a}-{b}-mix",
                mix,
                steps,
                lr,
                seed + offset,
                f"{mix[a]:.1%} each of {a} and {b}, {other:.0%} each other category, "
                f"{BROAD_REPLAY_SHARE:.0%} replay, constant learning rate",
                lr_floor=1.0,
            )
        )
    return cands


def task_config(task_name: str, kind: str, data: Path) -> dict:
    """The lm-eval task config of a zoo task whose dev and test JSONL files are in `data`."""
    cfg: dict = {
        "task": task_name,
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {"validation": str(data / "dev.jsonl"), "test": str(data / "test.jsonl")}
        },
        "validation_split": "validation",
        "test_split": "test",
        # plain field names: lm-eval reads them straight from the row, where a Jinja template would
        # be compiled again for every example on every evaluation (most of an evaluation's overhead)
        "doc_to_text": "prompt",
        "target_delimiter": "",  # the prompt ends with '=' and the answer follows directly
    }
    if kind == "mc":
        cfg |= {
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
    else:
        cfg |= {
            "output_type": "generate_until",
            "doc_to_target": "target",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        }
    cfg["metadata"] = {"version": ZOO_VERSION}
    return cfg


def _write_jsonl(path: Path, examples: list[Example]) -> None:
    path.write_text("".join(json.dumps(ex.row()) + "\n" for ex in examples))


def write_benchmark(
    root: Path, final_root: Path, size: ZooSize, seed: int
) -> tuple[dict[str, list[Example]], dict[str, list[Example]]]:
    """Data, task YAMLs (pointing at `final_root`, where the zoo will live) and suite.yaml.

    Returns the base's pretraining examples and the fine-tunes' training examples, per task.
    """
    pretrain_sets: dict[str, list[Example]] = {}
    train_sets: dict[str, list[Example]] = {}
    (root / "tasks").mkdir(parents=True)
    for task in TASKS:
        splits = make_splits(
            task,
            seed=seed,
            n_train=size.n_train,
            n_dev=size.n_dev,
            n_test=size.n_test,
            n_pretrain=size.n_train,  # as many as a fine-tune draws from; fewer where the easy range is small
        )
        folder = root / "data" / task.name
        folder.mkdir(parents=True)
        for split, examples in splits.items():
            _write_jsonl(folder / f"{split}.jsonl", examples)
        train_sets[task.name] = splits["train"]
        pretrain_sets[task.name] = splits["pretrain"]
        cfg = task_config(task.name, task.kind, final_root / "data" / task.name)
        (root / "tasks" / f"{task.name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    suite = {
        "name": f"soce-zoo-{seed}",
        "include_path": "tasks",
        "dev_split": "validation",
        "test_split": "test",
        "categories": [
            {"name": cat, "tasks": [{"name": t.name, "metric": t.metric} for t in TASKS if t.category == cat]}
            for cat in CATEGORIES
        ],
    }
    (root / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    return pretrain_sets, train_sets


# Float results of the same program differ between CPUs: MKL and ATen pick kernels by instruction set
# (AVX2, AVX-512), which round differently, and training amplifies the difference until a skill forms
# on one machine and not on another. The build therefore runs in a child process with every library
# pinned to its AVX2 kernels (what x86 CPUs of the last decade have; no slower where AVX2 is the
# best), so a seed gives the same zoo on such CPUs.
PORTABLE_NUMERICS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's vectorised kernels
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: one code path
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OMP_NUM_THREADS": "1",
}
_CHILD = "SOCE_ZOO_BUILD_CHILD"


def build_zoo(
    out: Path,
    *,
    size: str = "tiny",
    seed: int = 0,
    pool: str = "default",
    force: bool = False,
    progress: Callable[[int], Callable[[int], None]] | None = None,
    threads: int | None = None,
) -> Path:
    """Build a zoo at `out` (atomically: a temporary folder beside it is renamed at the end).

    `pool` chooses the candidates (POOLS; see plans()). The training runs in a child process with
    portable numerics (PORTABLE_NUMERICS); `progress` hears its steps.
    """
    if size not in SIZES:
        raise ValueError(f"unknown zoo size {size!r}; use one of {', '.join(SIZES)}")
    if pool not in POOLS:
        raise ValueError(f"unknown zoo pool {pool!r}; use one of {', '.join(POOLS)}")
    out = out.expanduser().resolve()
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; pass --force to rebuild it")
    if os.environ.get(_CHILD) == "1":
        return _build_here(out, size=size, seed=seed, pool=pool, progress=progress, threads=threads)
    return _build_in_child(out, size=size, seed=seed, pool=pool, progress=progress, threads=threads)


def _build_in_child(
    out: Path,
    *,
    size: str,
    seed: int,
    pool: str,
    progress: Callable[[int], Callable[[int], None]] | None,
    threads: int | None,
) -> Path:
    import subprocess
    import sys

    env = {**os.environ, **PORTABLE_NUMERICS, _CHILD: "1"}
    args = json.dumps({"out": str(out), "size": size, "seed": seed, "pool": pool, "threads": threads})
    child = subprocess.Popen(
        [sys.executable, "-m", "soce.zoo.build", args],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    tick = None
    error = None
    try:
        assert child.stdout is not None
        for line in child.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "total" and progress is not None:
                tick = progress(int(rest))
            elif kind == "steps" and tick is not None:
                tick(int(rest))
            elif kind == "error":
                error = json.loads(rest)
        code = child.wait()
    except BaseException:
        child.send_signal(2)  # SIGINT: the child removes its partial folder
        child.wait()
        raise
    if error is not None:
        raise (OutputExistsError if error["type"] == "OutputExistsError" else RuntimeError)(error["message"])
    if code != 0:
        raise RuntimeError(f"the zoo build process exited with status {code}")
    return out


def _child_main(raw: str) -> int:
    """`python -m soce.zoo.build ARGS`: the child of build_zoo; progress and errors on stdout."""
    args = json.loads(raw)
    pending = [0, time.monotonic()]

    def progress(total: int) -> Callable[[int], None]:
        print(f"total {total}", flush=True)

        def tick(n: int = 1) -> None:
            pending[0] += n
            if time.monotonic() - pending[1] > 0.2:
                print(f"steps {pending[0]}", flush=True)
                pending[0], pending[1] = 0, time.monotonic()

        return tick

    try:
        out, size, seed = Path(args["out"]), args["size"], args["seed"]
        _build_here(out, size=size, seed=seed, pool=args["pool"], progress=progress, threads=args["threads"])
    except Exception as e:
        print("error " + json.dumps({"type": type(e).__name__, "message": str(e)}), flush=True)
        return 1
    if pending[0]:
        print(f"steps {pending[0]}", flush=True)
    return 0


def _build_here(
    out: Path,
    *,
    size: str,
    seed: int,
    pool: str,
    progress: Callable[[int], Callable[[int], None]] | None,
    threads: int | None,
) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from soce.zoo.tokenizer import build_char_tokenizer, vocab_size

    spec = SIZES[size]
    started = time.perf_counter()
    # one thread: these matrices are too small to gain from more, a busy machine does not stall it, and
    # the result does not depend on the number of cores
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        tmp.chmod(0o755)
        pretrain_sets, train_sets = write_benchmark(tmp, out, spec, seed)
        tokenizer = build_char_tokenizer()
        base_plan, instruct_plan, cand_plans = plans(spec, seed, pool)
        total = base_plan.steps + instruct_plan.steps + sum(p.steps for p in cand_plans)
        tick = progress(total) if progress else None
        batcher = Batcher(train_sets, replay=pretrain_sets)
        config = LlamaConfig(
            vocab_size=vocab_size(),
            hidden_size=spec.hidden,
            intermediate_size=spec.intermediate,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.heads,
            max_position_embeddings=64,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        torch.manual_seed(seed)
        base = LlamaForCausalLM(config)
        losses = {"base": train(base, Batcher(pretrain_sets), base_plan, batch_size=spec.batch, tick=tick)}
        _save(base, tokenizer, tmp / "base")
        instruct = base  # trained on in place: the base is saved
        losses["instruct"] = train(instruct, batcher, instruct_plan, batch_size=spec.batch, tick=tick)
        _save(instruct, tokenizer, tmp / "instruct")
        for plan in cand_plans:
            model = copy.deepcopy(instruct)
            losses[plan.name] = train(model, batcher, plan, batch_size=spec.batch, tick=tick)
            _save(model, tokenizer, tmp / "candidates" / plan.name)
            del model
        manifest = {
            "version": ZOO_VERSION,
            "size": size,
            "seed": seed,
            "pool": pool,
            "shape": asdict(spec),
            "base": {**asdict(base_plan), "path": "base"},
            "instruct": {**asdict(instruct_plan), "path": "instruct"},
            "candidates": [{**asdict(p), "path": f"candidates/{p.name}"} for p in cand_plans],
            "final_train_loss": losses,
            "build_seconds": round(time.perf_counter() - started, 1),
        }
        (tmp / "zoo.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads_before)
    return out


def _save(model, tokenizer, folder: Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar covers the build
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)  # greedy defaults; nothing to keep


def candidate_paths(zoo: Path) -> list[Path]:
    """The candidate folders of a built zoo, in build order."""
    manifest = json.loads((zoo / "zoo.json").read_text())
    return [zoo / c["path"] for c in manifest["candidates"]]


if __name__ == "__main__":
    import sys

    sys.exit(_child_main(sys.argv[1]))
