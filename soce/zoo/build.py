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
from dataclasses import asdict
from pathlib import Path

import yaml

from soce.errors import OutputExistsError
from soce.zoo.plans import POOLS, SIZES, ZOO_VERSION, ZooSize, plans
from soce.zoo.tasks import CATEGORIES, TASKS, Example, make_splits
from soce.zoo.train import Batcher, train

log = logging.getLogger(__name__)

__all__ = ["POOLS", "SIZES", "ZOO_VERSION", "ZooSize", "build_zoo", "candidate_paths", "plans", "task_config"]


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
