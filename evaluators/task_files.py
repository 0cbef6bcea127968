"""lm-eval task YAMLs read without importing lm-eval: find a task's file and fingerprint its content.

The fingerprint is what the score cache keys a task on: it changes when the task's YAML (or a YAML
it includes), its local data files or its Python helpers change, and it includes the split, but
not the folder the files live in, so a zoo that moves keeps its cached scores.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from soce.errors import SuiteError
from soce.schemas.suite import Split, SuiteSpec, canonical_hash, file_digest

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
_digests: dict[str, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, sha256)
_configs: dict[str, tuple[int, int, dict[str, Any]]] = {}  # yaml path -> (size, mtime_ns, config)


class _TaskLoader(yaml.SafeLoader):
    """lm-eval's YAML dialect: `!function module.name` kept as a string."""


_TaskLoader.add_constructor(
    "!function",
    lambda loader, node: f"!function {loader.construct_scalar(node)}",  # type: ignore[arg-type]
)


def cached_digest(path: Path) -> str:
    """SHA-256 of a file, remembered in this process by path, size and modification time."""
    st = path.stat()
    hit = _digests.get(str(path))
    if hit and hit[:2] == (st.st_size, st.st_mtime_ns):
        return hit[2]
    digest = file_digest(path)
    _digests[str(path)] = (st.st_size, st.st_mtime_ns, digest)
    return digest


def read_task_yaml(path: Path) -> dict[str, Any]:
    """A task YAML as a mapping (an unreadable file gives an empty one, as lm-eval skips it)."""
    st = path.stat()
    hit = _configs.get(str(path))
    if hit and hit[:2] == (st.st_size, st.st_mtime_ns):
        return hit[2]
    try:
        data = yaml.load(path.read_text(), Loader=_TaskLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        log.debug("skipping %s (%s)", path, e)
        data = None
    cfg = data if isinstance(data, dict) else {}
    _configs[str(path)] = (st.st_size, st.st_mtime_ns, cfg)
    return cfg


def task_index(include_path: str | Path) -> dict[str, Path]:
    """Task name -> YAML file for every task under `include_path` (the first file wins, as in lm-eval)."""
    index: dict[str, Path] = {}
    root = Path(include_path)
    for path in sorted(root.glob("**/*.yaml"), key=lambda p: p.as_posix()):
        if "__pycache__" in path.parts:
            continue
        name = read_task_yaml(path).get("task")
        if isinstance(name, str) and name not in index:
            index[name] = path
    return index


def find_task_yaml(suite: SuiteSpec, name: str) -> Path | None:
    """The YAML defining task `name` in the suite's include_path; None for lm-eval's built-in tasks."""
    if not suite.include_path:
        return None
    if not Path(suite.include_path).is_dir():
        raise SuiteError(f"suite {suite.name!r}: include_path {suite.include_path} is not a folder")
    index = task_index(suite.include_path)
    if name not in index:
        offered = ", ".join(sorted(index)) or "no tasks"
        raise SuiteError(
            f"suite {suite.name!r}: task {name!r} is not defined in {suite.include_path} "
            f"(it offers: {offered})"
        )
    return index[name]


def declared_splits(suite: SuiteSpec, name: str) -> list[str]:
    """The split names a task's YAML lists under dataset_kwargs.data_files (empty if it lists none)."""
    path = find_task_yaml(suite, name)
    kwargs = read_task_yaml(path).get("dataset_kwargs") if path else None
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    return [str(k) for k in files] if isinstance(files, dict) else []


def string_list(value: Any) -> list[str]:
    """A YAML value that may be one string or a list of them, as a list of its strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _local_file(ref: str, base: Path) -> Path | None:
    for candidate in (Path(ref).expanduser(), base / ref):
        if candidate.is_file():
            return candidate
    return None


def _config_content(path: Path, seen: set[Path]) -> dict[str, Any]:
    """A YAML's parsed config with includes, data files and helpers replaced by their digests."""
    seen.add(path)
    cfg = dict(read_task_yaml(path))
    content: dict[str, Any] = {"config": cfg}
    for inc in string_list(cfg.get("include")):
        target = _local_file(inc, path.parent)
        if target is not None and target not in seen:
            content.setdefault("includes", []).append(_config_content(target, seen))
    kwargs = cfg.get("dataset_kwargs")
    if isinstance(kwargs, dict) and "data_files" in kwargs:
        files = kwargs["data_files"]
        splits = files if isinstance(files, dict) else {"": files}
        digests = {}
        for split, refs in splits.items():
            digests[str(split)] = [
                cached_digest(f) if (f := _local_file(r, path.parent)) else r for r in string_list(refs)
            ]
        cfg["dataset_kwargs"] = {**kwargs, "data_files": digests}
    dataset_dir = cfg.get("dataset_path")
    if isinstance(dataset_dir, str) and Path(dataset_dir).expanduser().is_dir():
        root = Path(dataset_dir).expanduser()
        content["dataset_files"] = {
            p.relative_to(root).as_posix(): cached_digest(p) for p in sorted(root.rglob("*")) if p.is_file()
        }
        cfg["dataset_path"] = "<local folder>"
    if "!function" in str(cfg):
        content["python"] = {p.name: cached_digest(p) for p in sorted(path.parent.glob("*.py"))}
    return content


def task_fingerprint(suite: SuiteSpec, name: str, split: Split, *, lm_eval_version: str) -> str:
    """Content hash of what defines task `name` on the suite's `split` (SuiteError if it is unknown)."""
    path = find_task_yaml(suite, name)
    payload: dict[str, Any] = {
        "fingerprint": FINGERPRINT_VERSION,
        "task": name,
        "split": suite.split_name(split),
    }
    if suite.apply_chat_template:  # the prompts are the model's chat template around the task's text
        payload["chat_template"] = True
    if path is None:  # built-in lm-eval task: its definition comes with the lm-eval version
        payload["lm_eval"] = lm_eval_version
    else:
        payload["content"] = _config_content(path, set())
    return canonical_hash(payload)
