"""The `soce` command: help, inspect, and merge refusing bad input with one clear line (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch
import yaml
from typer.testing import CliRunner

from soce.checkpoints import Checkpoint, save_file
from soce.cli import app

runner = CliRunner()


def invoke(*args: object):
    result = runner.invoke(app, [str(a) for a in args])
    # anything but a clean exit (an uncaught exception) is a failure of the CLI itself
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def write_recipe(
    tmp_path: Path,
    candidates: list[tuple[Path, float | None]],
    method: str = "linear",
    name: str = "recipe.yml",
    **extra,
) -> Path:
    data: dict = {
        "method": method,
        "candidates": [{"path": str(p), **({} if w is None else {"weight": w})} for p, w in candidates],
    }
    data.update(extra)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rewrite_weights(folder: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    with Checkpoint.open(folder) as ckpt:
        tensors = {name: ckpt.read_float32(name).copy() for name in ckpt.tensors}
    change(tensors)
    save_file(tensors, folder / "model.safetensors")


@pytest.fixture
def outs(tmp_path: Path) -> Path:
    """An empty folder for the soup, so leftovers beside it are easy to see."""
    folder = tmp_path / "outs"
    folder.mkdir()
    return folder


def assert_refused(result, out: Path, *needles: str) -> str:
    """Exit 2, one 'error: ...' line naming the problem, and nothing written beside `out`."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    return line


def soup_values(folder: Path) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(folder / "model.safetensors"))


# --- help ------------------------------------------------------------------------------------------


def test_help_lists_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("merge", "inspect", "methods", "demo", "run", "score"):
        assert command in result.output


@pytest.mark.parametrize("command", ["merge", "inspect", "methods", "demo", "run"])
def test_command_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert f"soce {command}" in result.output


def test_console_script_help() -> None:
    script = Path(sys.executable).with_name("soce")
    assert script.is_file(), f"console script missing at {script}"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "merge" in proc.stdout and "inspect" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


# what `soce --help` and the help of each command must not load: heavy libraries and the other packages
HEAVY = ("torch", "transformers", "lm_eval", "optuna", "celery", "sqlalchemy")
OURS_BEHIND_COMMANDS = ("api", "workers", "evaluators", "optimizer")
HELPED = ([], ["merge"], ["run"], ["score"], ["db", "upgrade"], ["schedule", "create"], ["worker"])


def test_help_loads_no_heavy_library() -> None:
    code = (
        "import json, sys\n"
        "from soce.cli import app\n"
        f"for args in {HELPED!r}:\n"
        "    try:\n"
        "        app([*args, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = {name.partition(".")[0] for name in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert sorted(loaded & {*HEAVY, *OURS_BEHIND_COMMANDS}) == []


def test_python_m_soce_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "soce.cli", "methods"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "linear"


def test_methods_lists_every_method() -> None:
    result = invoke("methods")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.strip().splitlines()]
    assert names == ["linear", "uniform", "layerwise", "task_arithmetic", "ties", "dare"]


# --- inspect ---------------------------------------------------------------------------------------


def test_inspect_compatible(make_checkpoints) -> None:
    a, b = make_checkpoints(2)
    result = invoke("inspect", a, b)
    assert result.exit_code == 0, result.output
    with Checkpoint.open(a) as ckpt:
        n = ckpt.num_parameters
    assert f"{n:,} parameters" in result.output
    assert "float32" in result.output
    assert result.output.count("content hash ") == 2
    assert str(a) in result.output and str(b) in result.output
    assert "LlamaForCausalLM" in result.output
    assert "compatible: these 2 checkpoints can be merged" in result.output


def test_inspect_json(make_checkpoints) -> None:
    a, b = make_checkpoints(2)
    (tied,) = make_checkpoints(1, tied=True, dtype="bfloat16")
    result = invoke("inspect", "--json", a, b)
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["compatibility"] == {"compatible": True, "problems": []}
    rows = data["checkpoints"]
    assert [r["path"] for r in rows] == [str(a), str(b)]
    assert rows[0]["dtype"] == "float32"
    assert rows[0]["layers"] == 2 and rows[0]["hidden_size"] == 32
    assert rows[0]["bytes"] == 4 * rows[0]["parameters"]
    assert rows[0]["format"] == "safetensors"
    assert len(rows[0]["content_hash"]) == 64
    assert rows[0]["content_hash"] != rows[1]["content_hash"]

    single = json.loads(invoke("inspect", "--json", tied).stdout)["checkpoints"][0]
    assert single["tied_embeddings"] is True
    assert single["dtype"] == "bfloat16"
    assert single["bytes"] == 2 * single["parameters"]


def test_inspect_incompatible_exits_1_and_names_problem(make_checkpoints) -> None:
    a, b = make_checkpoints(2)

    def shrink(t: dict[str, np.ndarray]) -> None:
        t["model.norm.weight"] = t["model.norm.weight"][:16].copy()

    rewrite_weights(b, shrink)
    result = invoke("inspect", a, b)
    assert result.exit_code == 1
    assert "not compatible" in result.output
    assert "[shape]" in result.output
    assert "model.norm.weight" in result.output

    data = json.loads(invoke("inspect", "--json", a, b).stdout)
    assert data["compatibility"]["compatible"] is False
    assert data["compatibility"]["problems"][0]["kind"] == "shape"


def test_inspect_scan_reports_nan(make_checkpoints) -> None:
    (a,) = make_checkpoints(1)

    def poison(t: dict[str, np.ndarray]) -> None:
        t["model.layers.0.self_attn.v_proj.weight"][3, 3] = np.nan

    rewrite_weights(a, poison)
    result = invoke("inspect", "--scan", a)
    assert result.exit_code == 1
    assert "NaN/Inf: model.layers.0.self_attn.v_proj.weight" in result.output


def test_inspect_missing_path(tmp_path: Path) -> None:
    result = invoke("inspect", tmp_path / "nope")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert str(tmp_path / "nope") in result.stderr


# --- merge: success --------------------------------------------------------------------------------


def test_merge_linear_writes_weighted_average(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)
    recipe = write_recipe(tmp_path, [(a, 3.0), (b, 1.0)])
    out = outs / "soup"
    result = invoke("merge", "-q", recipe, out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "soce_recipe.yml"):
        assert (out / name).is_file(), name
    va, vb, soup = soup_values(a), soup_values(b), soup_values(out)
    assert set(soup) == set(va)
    for name, arr in soup.items():
        np.testing.assert_allclose(arr, np.float32(0.75) * va[name] + np.float32(0.25) * vb[name], rtol=1e-6)
    assert [p.name for p in outs.iterdir()] == ["soup"]


def test_merge_relative_paths_are_relative_to_recipe(make_checkpoints, outs: Path, monkeypatch) -> None:
    a, b = make_checkpoints(2)
    recipe = a.parent / "recipe.yml"
    recipe.write_text(f"method: uniform\ncandidates: [{a.name}, {b.name}]\n")
    monkeypatch.chdir(outs)
    result = invoke("merge", "-q", recipe, outs / "soup")
    assert result.exit_code == 0, result.output
    soup = soup_values(outs / "soup")
    va, vb = soup_values(a), soup_values(b)
    np.testing.assert_allclose(
        soup["lm_head.weight"], (va["lm_head.weight"] + vb["lm_head.weight"]) / 2, rtol=1e-6
    )


# --- merge: refusals -------------------------------------------------------------------------------


def test_merge_missing_candidate(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    (a,) = make_checkpoints(1)
    missing = tmp_path / "no-such-checkpoint"
    recipe = write_recipe(tmp_path, [(a, 0.5), (missing, 0.5)])
    assert_refused(invoke("merge", recipe, outs / "soup"), outs / "soup", str(missing), "no such file")


def test_merge_missing_recipe(tmp_path: Path, outs: Path) -> None:
    assert_refused(invoke("merge", tmp_path / "nope.yml", outs / "soup"), outs / "soup", "nope.yml")


def test_merge_shape_mismatch(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)

    def shrink(t: dict[str, np.ndarray]) -> None:
        t["model.layers.1.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"][:, :16].copy()

    rewrite_weights(b, shrink)
    recipe = write_recipe(tmp_path, [(a, 0.5), (b, 0.5)])
    assert_refused(
        invoke("merge", recipe, outs / "soup"),
        outs / "soup",
        "model.layers.1.mlp.up_proj.weight",
        "[64, 16]",
        "[64, 32]",
    )


def test_merge_tokenizer_mismatch(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)
    path = b / "tokenizer.json"
    tok = json.loads(path.read_text())
    tok["model"]["vocab"]["Q!"] = tok["model"]["vocab"].pop("Q")
    path.write_text(json.dumps(tok))
    recipe = write_recipe(tmp_path, [(a, 0.5), (b, 0.5)])
    assert_refused(invoke("merge", recipe, outs / "soup"), outs / "soup", "tokenizer", str(b))


def test_merge_truncated_safetensors(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)
    weights = b / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    recipe = write_recipe(tmp_path, [(a, 0.5), (b, 0.5)])
    assert_refused(invoke("merge", recipe, outs / "soup"), outs / "soup", "truncated", str(weights))


def _to_pickle(folder: Path) -> None:
    with Checkpoint.open(folder) as ckpt:
        state = {name: torch.from_numpy(ckpt.read_float32(name).copy()) for name in ckpt.tensors}
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")


def test_merge_pickle_needs_allow_pickle(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)
    expected_b = soup_values(b)
    _to_pickle(b)
    recipe = write_recipe(tmp_path, [(a, 0.5), (b, 0.5)])
    out = outs / "soup"
    assert_refused(invoke("merge", recipe, out), out, "pytorch_model.bin", "--allow-pickle")

    result = invoke("merge", "-q", "--allow-pickle", recipe, out)
    assert result.exit_code == 0, result.output
    va, soup = soup_values(a), soup_values(out)
    for name, arr in soup.items():
        np.testing.assert_allclose(
            arr, np.float32(0.5) * va[name] + np.float32(0.5) * expected_b[name], rtol=1e-6
        )


class _Unpicklable:
    """torch.load(weights_only=True) refuses this class."""


def test_merge_refused_pickle_object_is_one_line(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)
    (b / "model.safetensors").unlink()
    torch.save({"w": torch.ones(2), "obj": _Unpicklable()}, b / "pytorch_model.bin")
    recipe = write_recipe(tmp_path, [(a, 0.5), (b, 0.5)])
    assert_refused(
        invoke("merge", "--allow-pickle", recipe, outs / "soup"), outs / "soup", "pytorch_model.bin"
    )


def test_merge_pickle_that_is_not_a_state_dict(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)
    (b / "model.safetensors").unlink()
    torch.save([torch.ones(2)], b / "pytorch_model.bin")
    recipe = write_recipe(tmp_path, [(a, 0.5), (b, 0.5)])
    assert_refused(
        invoke("merge", "--allow-pickle", recipe, outs / "soup"), outs / "soup", "pytorch_model.bin"
    )


def test_inspect_pickle(make_checkpoints) -> None:
    (a,) = make_checkpoints(1)
    _to_pickle(a)
    result = invoke("inspect", a)
    assert result.exit_code == 2
    assert "--allow-pickle" in result.stderr
    data = json.loads(invoke("inspect", "--json", "--allow-pickle", a).stdout)
    assert data["checkpoints"][0]["format"] == "pickle"
    assert data["checkpoints"][0]["dtype"] == "float32"


def test_merge_dtype_mismatch(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    (a,) = make_checkpoints(1)
    (b,) = make_checkpoints(1, dtype="bfloat16", seed=1)
    recipe = write_recipe(tmp_path, [(a, 0.5), (b, 0.5)])
    assert_refused(invoke("merge", recipe, outs / "soup"), outs / "soup", "model.embed_tokens.weight", "BF16")


@pytest.mark.parametrize("target", ["input", "ancestor"])
def test_merge_force_never_replaces_an_input(make_checkpoints, tmp_path: Path, target: str) -> None:
    a, b = make_checkpoints(2)
    recipe = write_recipe(tmp_path, [(a, 0.5), (b, 0.5)])
    out = a if target == "input" else a.parent
    before = sorted(p.name for p in out.iterdir())
    result = invoke("merge", "--force", recipe, out)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "would overwrite the input" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == before
    assert (a / "model.safetensors").is_file()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_merge_negative_weight(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)
    out = outs / "soup"
    recipe = write_recipe(tmp_path, [(a, 1.5), (b, -0.5)])
    assert_refused(invoke("merge", recipe, out), out, "-0.5", str(b), "allow_negative_weights")

    allowed = write_recipe(
        tmp_path, [(a, 1.5), (b, -0.5)], name="allowed.yml", parameters={"allow_negative_weights": True}
    )
    result = invoke("merge", "-q", allowed, out)
    assert result.exit_code == 0, result.output
    va, vb, soup = soup_values(a), soup_values(b), soup_values(out)
    for name, arr in soup.items():
        np.testing.assert_allclose(
            arr, np.float32(1.5) * va[name] + np.float32(-0.5) * vb[name], rtol=1e-5, atol=1e-7
        )


def test_merge_nan_weight(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)
    recipe = tmp_path / "nan.yml"
    recipe.write_text(
        f"method: linear\ncandidates:\n  - {{path: {a}, weight: 0.5}}\n  - {{path: {b}, weight: .nan}}\n"
    )
    assert_refused(invoke("merge", recipe, outs / "soup"), outs / "soup", "nan", str(b), "finite")


def test_merge_all_zero_weights(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)
    recipe = write_recipe(tmp_path, [(a, 0.0), (b, 0.0)])
    assert_refused(invoke("merge", recipe, outs / "soup"), outs / "soup", "zero")


def test_merge_single_candidate_for_linear(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    (a,) = make_checkpoints(1)
    recipe = write_recipe(tmp_path, [(a, 1.0)])
    assert_refused(invoke("merge", recipe, outs / "soup"), outs / "soup", "'linear'", "at least 2 candidates")


def test_merge_unknown_method(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)
    recipe = write_recipe(tmp_path, [(a, 0.5), (b, 0.5)], method="frankenmerge")
    line = assert_refused(invoke("merge", recipe, outs / "soup"), outs / "soup", "'frankenmerge'")
    assert "linear" in line  # lists what is available


def test_merge_unknown_recipe_key(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)
    recipe = write_recipe(tmp_path, [(a, 0.5), (b, 0.5)], wieghts=[1, 2])
    assert_refused(invoke("merge", recipe, outs / "soup"), outs / "soup", "wieghts")


def test_merge_malformed_yaml(tmp_path: Path, outs: Path) -> None:
    recipe = tmp_path / "bad.yml"
    recipe.write_text("method: linear\ncandidates: [{path: a, weight: 0.5}\n")
    result = invoke("merge", recipe, outs / "soup")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert str(recipe) in result.stderr
    assert "not valid YAML" in result.stderr
    assert not (outs / "soup").exists()
    assert list(outs.iterdir()) == []


def test_merge_malformed_yaml_is_one_line(tmp_path: Path, outs: Path) -> None:
    recipe = tmp_path / "bad.yml"
    recipe.write_text("method: linear\ncandidates: [{path: a, weight: 0.5}\n")
    assert_refused(invoke("merge", recipe, outs / "soup"), outs / "soup", "not valid YAML")


def test_merge_recipe_that_is_not_a_mapping(tmp_path: Path, outs: Path) -> None:
    recipe = tmp_path / "list.yml"
    recipe.write_text("- just\n- a list\n")
    assert_refused(invoke("merge", recipe, outs / "soup"), outs / "soup", "mapping")


def test_merge_existing_output_needs_force(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)
    out = outs / "soup"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    recipe = write_recipe(tmp_path, [(a, 0.5), (b, 0.5)])
    result = invoke("merge", recipe, out)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(out) in lines[0] and "--force" in lines[0]
    assert (out / "keep.txt").read_text() == "precious"  # untouched
    assert not (out / "model.safetensors").exists()

    result = invoke("merge", "--force", "-q", recipe, out)
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in outs.iterdir()) == ["soup"]  # no .old or .partial folders left


def test_merge_force_with_bad_recipe_keeps_existing_output(
    make_checkpoints, tmp_path: Path, outs: Path
) -> None:
    a, b = make_checkpoints(2)
    out = outs / "soup"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    recipe = write_recipe(tmp_path, [(a, 0.0), (b, 0.0)])
    result = invoke("merge", "--force", recipe, out)
    assert result.exit_code == 2
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in outs.iterdir()) == ["soup"]


def test_merge_failure_while_writing_leaves_nothing(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    """A NaN found mid-merge (--check-finite) fails after the temporary folder exists; it is removed."""
    a, b = make_checkpoints(2)

    def poison(t: dict[str, np.ndarray]) -> None:
        t["model.layers.0.mlp.up_proj.weight"][0, 0] = np.nan

    rewrite_weights(b, poison)
    recipe = write_recipe(tmp_path, [(a, 0.5), (b, 0.5)])
    assert_refused(
        invoke("merge", "-q", "--check-finite", recipe, outs / "soup"),
        outs / "soup",
        "model.layers.0.mlp.up_proj.weight",
        "NaN",
    )


def test_merge_bad_option_values(make_checkpoints, tmp_path: Path, outs: Path) -> None:
    a, b = make_checkpoints(2)
    recipe = write_recipe(tmp_path, [(a, 0.5), (b, 0.5)])
    assert_refused(
        invoke("merge", "--dtype", "int3", recipe, outs / "soup"), outs / "soup", "--dtype", "int3"
    )
    assert_refused(
        invoke("merge", "--shard-size", "lots", recipe, outs / "soup"), outs / "soup", "--shard-size"
    )


def test_zoo_build_refuses_unknown_size_and_existing_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["zoo", "build", str(tmp_path / "z"), "--size", "huge"])
    assert result.exit_code == 2 and "--size must be one of tiny, demo" in result.output
    assert not (tmp_path / "z").exists()
    (tmp_path / "z").mkdir()
    result = runner.invoke(app, ["zoo", "build", str(tmp_path / "z")])
    assert result.exit_code == 2 and "already exists" in result.output and "--force" in result.output


# --- schedule (on an embedded SQLite database; PostgreSQL in tests/db/test_schedules.py) ----------------


@pytest.fixture
def schedule_db(tmp_path: Path):
    """An app database with one stored suite: its URL and the suite's id."""
    from soce.db import Suite, dispose_engines, get_engine, session_scope

    url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    with session_scope(get_engine(url)) as session:
        suite = Suite(name="s", spec={}, content_hash="s" * 64)
        session.add(suite)
        session.flush()
        suite_id = suite.id
    yield url, suite_id
    dispose_engines()


def test_schedule_create_update_list(schedule_db) -> None:
    url, suite_id = schedule_db
    create = ["schedule", "create", "--database-url", url, "--name", "nightly", "--cron", "0 2 * * *"]
    unknown = invoke(*create, "--suite-id", 999, "--tag", "t")
    assert unknown.exit_code == 2 and "--suite-id" in unknown.output
    assert "suite 999 does not exist" in unknown.output
    bad = invoke(*create, "--suite-id", suite_id, "--tag", "t", "--recipe", '{"sampler": "nope"}')
    assert bad.exit_code == 2 and "sampler" in bad.output
    assert invoke("schedule", "list", "--database-url", url).stdout.startswith("no schedules;")

    created = invoke(*create, "--suite-id", suite_id, "--tag", "t", "--recipe", '{"sampler": "grid"}')
    assert created.exit_code == 0, created.output
    assert created.stdout.startswith("created schedule 1 'nightly'; next run ")
    taken = invoke(*create, "--suite-id", suite_id, "--tag", "t")
    assert taken.exit_code == 2 and taken.stderr.startswith("error: database ")

    update = ["schedule", "update", "nightly", "--database-url", url]
    changed = invoke(*update, "--timezone", "Europe/Paris", "--disable", "--min-improvement", "0.02")
    assert changed.exit_code == 0, changed.output
    assert changed.stdout.startswith(
        "updated schedule 1 'nightly': '0 2 * * *' Europe/Paris, disabled, next "
    )
    missing = invoke("schedule", "update", "weekly", "--database-url", url, "--enable")
    assert missing.exit_code == 2 and "no schedule is named 'weekly'" in missing.output
    listed = invoke("schedule", "list", "--database-url", url).stdout
    assert "nightly  '0 2 * * *' Europe/Paris  disabled" in listed and "champion -" in listed
