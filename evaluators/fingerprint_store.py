"""Task fingerprints remembered with the sizes and modification times of the files they were computed from.

Computing a suite's fingerprints parses every task YAML and hashes what it names, most of a score-cache
hit in a fresh process. They are remembered in this process and in a file under the data folder, each
with a `files_stamp` of the files it was computed from; checking a stamp again costs stat calls only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evaluators.task_files import read_task_yaml, string_list

log = logging.getLogger(__name__)

FINGERPRINTS_FILE = "task-fingerprints.json"  # under the data folder: fingerprints with their file stamps
FINGERPRINTS_KEPT = 64
_fingerprints: dict[str, tuple[dict, tuple[str, ...]]] = {}  # suite split -> (files stamp, fingerprints)


def _walk(folder: str) -> list[list]:
    """[path, size, mtime] of the files under a folder, in a stable order."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            found += _walk(entry.path)
        elif entry.is_file():
            st = entry.stat()
            found.append([entry.path, st.st_size, st.st_mtime_ns])
    return found


def _stat(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [path, st.st_size, st.st_mtime_ns]


def files_stamp(include_path: str | None) -> dict[str, Any] | None:
    """Sizes and modification times of every file the fingerprints of a task folder read (None: no
    such folder): the folder's files (YAMLs, Python helpers) and those its YAMLs name (includes and
    their folders, data files, local dataset folders), as evaluators.task_files._config_content reads
    them. `stamp_holds` checks it again with stat calls only, no YAML parsing or hashing.
    """
    if not include_path:
        return {"folders": {}, "files": []}
    if not os.path.isdir(include_path):
        return None
    folders = {include_path: _walk(include_path)}
    files: list[list] = []
    yamls = [p for p, _, _ in folders[include_path] if p.endswith(".yaml")]
    seen: set[str] = set()
    while yamls:
        path = yamls.pop()
        if path in seen:
            continue
        seen.add(path)
        cfg = read_task_yaml(Path(path))
        kwargs = cfg.get("dataset_kwargs")
        data = kwargs.get("data_files") if isinstance(kwargs, dict) else None
        named = [*string_list(cfg.get("include")), *string_list(cfg.get("dataset_path"))]
        for refs in data.values() if isinstance(data, dict) else [data]:
            named += string_list(refs)
        for ref in named:
            if ref.strip() in ("", "."):
                continue
            here = os.path.expanduser(ref)
            for candidate in dict.fromkeys((here, os.path.join(os.path.dirname(path), here))):
                found = _stat(candidate)
                if found is None:
                    continue
                if os.path.isdir(candidate):
                    folders.setdefault(candidate, _walk(candidate))
                    continue
                files.append(found)
                if candidate.endswith(".yaml"):  # an include: what it names, and its folder's helpers
                    yamls.append(candidate)
                    parent = os.path.dirname(candidate)
                    folders.setdefault(parent, _walk(parent))
    return {"folders": folders, "files": files}


def stamp_holds(stamp: dict[str, Any]) -> bool:
    """Whether no file of a `files_stamp` changed (or appeared in, or left, its folders)."""
    try:
        return all(_walk(folder) == entries for folder, entries in stamp["folders"].items()) and all(
            _stat(path) == [path, size, mtime] for path, size, mtime in stamp["files"]
        )
    except (OSError, KeyError, TypeError, ValueError):
        return False


def _read_fingerprints(store: Path) -> dict[str, Any]:
    try:
        data = json.loads(store.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_fingerprints(store: Path, key: str, entry: tuple[dict, tuple[str, ...]]) -> None:
    """Add an entry to the file of remembered fingerprints (replaced atomically; best effort)."""
    data = _read_fingerprints(store)
    data.pop(key, None)
    data[key] = [entry[0], list(entry[1])]
    data = dict(list(data.items())[-FINGERPRINTS_KEPT:])
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        partial = store.with_name(f".{store.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(json.dumps(data))
        os.replace(partial, store)
    except OSError as e:
        log.debug("cannot remember task fingerprints in %s (%s)", store, e)


def remembered_fingerprints(
    key: str,
    *,
    include_path: str | None,
    store: Path,
    count: int,
    compute: Callable[[], tuple[str, ...]],
) -> tuple[str, ...]:
    """The `count` fingerprints remembered under `key` (in this process, else in the file `store`) when
    none of the files under `include_path` they were computed from changed; else `compute()`'s, then
    remembered in both places."""
    found = _fingerprints.get(key)
    if found is not None and stamp_holds(found[0]):
        return found[1]
    stored = _read_fingerprints(store).get(key)
    if stored is not None and len(stored[1]) == count and stamp_holds(stored[0]):
        found = _fingerprints[key] = (stored[0], tuple(stored[1]))
        return found[1]
    stamp = files_stamp(include_path)  # before the fingerprints: a change in between shows
    fingerprints = compute()
    if stamp is not None:
        _fingerprints[key] = (stamp, fingerprints)
        _write_fingerprints(store, key, (stamp, fingerprints))
    return fingerprints
