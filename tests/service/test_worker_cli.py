"""`soce worker`: its options are checked before Celery starts; `soce --help` does not import Celery."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from soce.cli import app

runner = CliRunner()


def test_worker_help() -> None:
    result = runner.invoke(app, ["worker", "--help"])
    assert result.exit_code == 0
    assert "soce worker" in result.output and "--queues" in result.output


def test_worker_refuses_unknown_queue() -> None:
    result = runner.invoke(app, ["worker", "--queues", "gpu,tpu"])
    assert result.exit_code == 2
    assert "use gpu, cpu or gpu,cpu" in result.output


def test_cli_import_does_not_load_celery() -> None:
    code = "import sys, soce.cli; print('celery' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
