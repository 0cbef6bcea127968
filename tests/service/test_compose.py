"""docker-compose.yml and its Dockerfile, checked without a Docker engine (none runs here).

Every `soce ...` command is parsed by our real CLI, settings are read back through Settings, and the
Postgres init script, volumes, health checks and start order are checked against what the code expects;
none of that needs a service. The last two tests run the beat and migrate services' commands for real,
on the local Redis and PostgreSQL like the other service tests.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.core
import typer.main
import yaml
from pydantic import AliasChoices
from sqlalchemy.engine import make_url

from soce.cli import WORKER_QUEUES
from soce.cli import app as cli_app
from soce.config import Settings
from soce.db.migrate import HEAD

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = {
    "postgres",
    "redis",
    "migrate",
    "api",
    "worker-cpu",
    "worker-gpu",
    "beat",
    "flower",
    "optuna-dashboard",
}
AFTER_MIGRATE = ("api", "worker-cpu", "worker-gpu", "beat")  # they need the app tables to exist
TORCH_PIN = "torch==2.13.0"
# Typer parses with click (a copy of its own in newer releases): its UsageError covers unknown commands,
# unknown options and bad values alike.
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

# Compose's variable substitution: $$ is a literal $, ${VAR:-default} / ${VAR-default} / ${VAR} / $VAR.
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?-)([^}]*))?\}|\$(\w+)")


def _substitute(value: Any, env: dict[str, str]) -> Any:
    """`value` with variables substituted as `docker compose` would do in environment `env`."""
    if isinstance(value, dict):
        return {k: _substitute(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        current = env.get(name)
        if (m.group(2) == ":-" and not current) or (m.group(2) == "-" and current is None):
            return m.group(3)
        return current or ""

    return _VARIABLE.sub(one, value)


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return _substitute(yaml.safe_load(COMPOSE.read_text()), env or {})


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def argv_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def soce_commands(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """The services whose command runs `soce`, each with its arguments after `soce`."""
    commands = {name: argv_of(s) for name, s in services.items()}
    return {name: argv[1:] for name, argv in commands.items() if argv[:1] == ["soce"]}


def parse_soce(args: list[str]) -> Any:
    """The context of `soce ARGS` as our CLI parses it; a UsageError for an unknown command or option."""
    command: Any = typer.main.get_command(cli_app)
    name, parent = "soce", None
    while isinstance(command, typer.core.TyperGroup):
        ctx = command.make_context(name, list(args), parent=parent)
        # a group parses its own options; the subcommand and its arguments are what it leaves at the end
        args = args[len(args) - len(ctx.args) - 1 :]
        name, sub, args = command.resolve_command(ctx, args)
        assert name is not None and sub is not None
        command, parent = sub, ctx
    return command.make_context(name, list(args), parent=parent)


def settings_env_names() -> set[str]:
    """Every environment variable Settings reads."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(c for c in alias.choices if isinstance(c, str))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}")
    return {n.upper() for n in names}


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=value form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def settings_of(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the service's process would build them from its environment (and nothing else)."""
    for name in list(os.environ):
        if name.upper() in settings_env_names():
            monkeypatch.delenv(name)
    for name, value in environment_of(service).items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_every_service_is_there(services: dict[str, dict[str, Any]]) -> None:
    assert not SERVICES - set(services), f"missing services: {sorted(SERVICES - set(services))}"


def test_soce_commands_parse_with_our_cli(services: dict[str, dict[str, Any]]) -> None:
    commands = soce_commands(services)
    assert set(AFTER_MIGRATE) | {"migrate"} <= set(commands)
    for name, args in commands.items():
        try:
            parse_soce(args)
        except UsageError as e:
            pytest.fail(f"service {name}: `soce {shlex.join(args)}` does not parse: {e.format_message()}")


def test_parse_soce_refuses_what_the_cli_refuses() -> None:
    assert parse_soce(["db", "upgrade"]).info_name == "upgrade"
    for wrong in (["db", "upgrad"], ["serve", "--prot", "80"], ["serve", "--port", "x"], ["nosuch"]):
        with pytest.raises(UsageError):
            parse_soce(wrong)


def test_commands_do_what_each_service_is_for(services: dict[str, dict[str, Any]]) -> None:
    commands = soce_commands(services)
    migrate = parse_soce(commands["migrate"])
    assert migrate.command.name == "upgrade" and migrate.parent.info_name == "db"
    assert migrate.params["optuna"], "migrate prepares Optuna's database too (optuna-dashboard needs it)"
    assert parse_soce(commands["beat"]).command.name == "beat"

    serve = parse_soce(commands["api"])
    assert serve.command.name == "serve"
    assert serve.params["host"] == "0.0.0.0", "the API must listen beyond the container's loopback"
    published = [str(p).rsplit(":", 1)[-1] for p in services["api"].get("ports", [])]
    assert str(serve.params["port"]) in published

    for name, queue in (("worker-cpu", "cpu"), ("worker-gpu", "gpu")):
        worker = parse_soce(commands[name])
        assert worker.command.name == "worker"
        queues = worker.params["queues"].split(",")
        assert queues == [queue] and set(queues) <= set(WORKER_QUEUES), f"{name} consumes {queues}"


def _celery_app_module(argv: list[str]) -> str:
    assert argv[0] == "celery" and "--app" in argv, f"{shlex.join(argv)} names no --app"
    return argv[argv.index("--app") + 1]


def _healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = test
    return shlex.split(rest[0]) if kind == "CMD-SHELL" else rest


def test_celery_commands_load_our_app(services: dict[str, dict[str, Any]]) -> None:
    from celery import Celery

    flower = argv_of(services["flower"])
    assert flower[flower.index("--app") + 2] == "flower"
    celery_commands = [
        flower,
        *(_healthcheck_argv(services[n]) for n in ("worker-cpu", "worker-gpu", "beat")),
    ]
    for argv in celery_commands:
        module = importlib.import_module(_celery_app_module(argv))
        assert isinstance(module.app, Celery)


def test_health_checks_ping_the_node_each_service_runs(services: dict[str, dict[str, Any]]) -> None:
    commands = soce_commands(services)
    for name in ("worker-cpu", "worker-gpu"):
        node = parse_soce(commands[name]).params["hostname"]
        assert node and node.endswith("@%h"), f"{name}: name the worker so its health check can ping it"
        argv = _healthcheck_argv(services[name])
        assert argv[argv.index("--destination") + 1] == node.replace("%h", "$HOSTNAME")
    argv = _healthcheck_argv(services["beat"])
    assert argv[argv.index("--destination") + 1] == "celerybeat@$HOSTNAME"  # Celery's name for beat
    for name, service in services.items():
        for other, condition in (service.get("depends_on") or {}).items():
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in services[other], (
                    f"{name} waits for {other}, which has no health check"
                )


def test_settings_come_from_names_settings_reads(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = settings_env_names()
    assert {"SOCE_DATABASE_URL", "OPTUNA_STORAGE_URL", "SOCE_BROKER_URL", "SOCE_DATA_DIR"} <= known
    commands = soce_commands(services)
    for name, service in services.items():
        env = environment_of(service)
        ours = {k for k in env if k.upper().startswith(("SOCE_", "OPTUNA_"))}
        assert ours <= known, f"service {name}: Settings reads none of {sorted(ours - known)}"
        if name not in commands:
            continue
        with monkeypatch.context() as m:
            settings = settings_of(service, m)
        app_url, optuna_url = make_url(settings.app_database_url()), make_url(settings.optuna_url())
        for url in (app_url, optuna_url):
            assert url.get_backend_name() == "postgresql", f"{name} would use embedded SQLite"
            assert url.host in services, f"{name}: database host {url.host} is no service"
            url.get_dialect()  # the driver is installed with the project
        assert app_url.database != optuna_url.database, "Optuna must have a database of its own"
        broker = make_url(settings.broker_url)
        assert broker.drivername == "redis" and broker.host == "redis", f"{name}: broker {broker}"
        assert str(settings.data_dir) == "/var/lib/soce"


def test_optuna_dashboard_reads_the_workers_optuna_database(services: dict[str, dict[str, Any]]) -> None:
    argv = argv_of(services["optuna-dashboard"])
    assert argv[0] == "optuna-dashboard"
    workers = environment_of(services["worker-gpu"])
    assert argv[-1] == workers["OPTUNA_STORAGE_URL"]
    assert make_url(argv[-1]).database != make_url(workers["SOCE_DATABASE_URL"]).database


def test_postgres_init_creates_both_databases_and_their_owner(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    mounts = [str(v).split(":") for v in postgres["volumes"]]
    sources = [ROOT / m[0] for m in mounts if m[1] == "/docker-entrypoint-initdb.d"]
    assert len(sources) == 1 and sources[0].is_dir(), "mount an init folder on /docker-entrypoint-initdb.d"
    scripts = sorted(p for p in sources[0].iterdir() if p.suffix in (".sql", ".sh"))
    sql = "\n".join(p.read_text() for p in scripts)
    created = set(re.findall(r"CREATE DATABASE\s+\"?(\w+)\"?", sql, flags=re.IGNORECASE))
    roles = set(re.findall(r"CREATE (?:ROLE|USER)\s+\"?(\w+)\"?", sql, flags=re.IGNORECASE))
    env = environment_of(services["worker-gpu"])
    for key in ("SOCE_DATABASE_URL", "OPTUNA_STORAGE_URL"):
        url = make_url(env[key])
        assert url.database in created, f"{key}: database {url.database} is not created by {scripts}"
        assert url.username in roles, f"{key}: role {url.username} is not created by {scripts}"
        # the init script sets the role's password from the postgres service's environment
        assert url.password == environment_of(postgres)["APP_DB_PASSWORD"]


def test_variables_reach_every_url() -> None:
    compose = load_compose({"APP_DB_PASSWORD": "s3cret"})
    env = environment_of(compose["services"]["api"])
    assert make_url(env["SOCE_DATABASE_URL"]).password == "s3cret"
    assert make_url(compose["services"]["optuna-dashboard"]["command"][-1]).password == "s3cret"
    assert environment_of(compose["services"]["postgres"])["APP_DB_PASSWORD"] == "s3cret"


def test_gpu_worker_reserves_an_nvidia_gpu(services: dict[str, dict[str, Any]]) -> None:
    def nvidia(service: dict[str, Any]) -> list[dict[str, Any]]:
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]

    assert nvidia(services["worker-gpu"]), "worker-gpu needs deploy.resources.reservations.devices (nvidia)"
    assert not nvidia(services["worker-cpu"])


def test_start_order_waits_for_migrations(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart") == "no", "migrate runs once and exits"
    for name in AFTER_MIGRATE:
        depends = services[name].get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions (the long form)"
        assert depends.get("migrate", {}).get("condition") == "service_completed_successfully", name
        assert depends.get("redis", {}).get("condition") == "service_healthy", name
    dashboard = services["optuna-dashboard"]["depends_on"]
    assert dashboard["migrate"]["condition"] == "service_completed_successfully"
    for name, service in services.items():
        unknown = set(service.get("depends_on") or {}) - set(services)
        assert not unknown, f"{name} depends on unknown services {sorted(unknown)}"


def test_named_volumes_hold_checkpoints_and_soups(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    assert {"checkpoints", "soups"} <= declared
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
    for name in ("api", "worker-cpu", "worker-gpu"):  # the API reads soups; the workers write them
        mounts = dict(str(v).split(":")[:2] for v in services[name]["volumes"])
        data_dir = Path(environment_of(services[name])["SOCE_DATA_DIR"])
        assert mounts.get("soups") == str(data_dir / "soups"), f"{name}: soups go to data_dir/soups"
        assert "checkpoints" in mounts and mounts.get("soce-data") == str(data_dir)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_pins_torch_and_installs_the_project() -> None:
    steps = _dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    installs = [shlex.split(arg) for kind, arg in steps if kind == "RUN" and "pip install" in arg]
    assert installs, "the Dockerfile installs nothing"
    for argv in installs:
        torch = [a for a in argv if re.match(r"torch\b", a)]
        assert torch == [TORCH_PIN], f"pin torch in every install step: {shlex.join(argv)}"
    project = [argv for argv in installs if "." in argv]
    assert project, "no `pip install torch==2.13.0 .` step"
    # flower and optuna-dashboard run from the same image: installed and pinned
    assert {"flower", "optuna-dashboard"} <= {a.split("==")[0] for a in project[0] if "==" in a}


def test_image_holds_every_package_of_the_project() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {
        src.rstrip("/")
        for kind, arg in _dockerfile_instructions()
        if kind == "COPY"
        for src in shlex.split(arg)[:-1]
    }
    assert packages | {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    ignored = {ln.strip().rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not copied & ignored, f".dockerignore drops what the image copies: {sorted(copied & ignored)}"
    assert {".venv", ".git"} <= ignored


def test_compose_beat_command_runs_beat(redis_url: str, tmp_path: Path) -> None:
    """The beat service's command, run here: Celery beat starts and answers the health check's ping."""
    from workers.celery_app import make_app

    args = soce_commands(load_compose()["services"])["beat"]
    soce = Path(sys.executable).parent / "soce"
    env = {
        **os.environ,
        "SOCE_BROKER_URL": redis_url,
        "SOCE_DATA_DIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "beat.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(soce), *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    probe = make_app(Settings(broker_url=redis_url))
    try:
        deadline, replies = time.monotonic() + 60, []
        while not replies and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
            replies = probe.control.ping(destination=[f"celerybeat@{socket.gethostname()}"], timeout=1)
        assert replies, f"beat did not answer a ping:\n{log.read_text(errors='replace')[-3000:]}"
        assert list(tmp_path.glob("celerybeat-schedule*")), "beat keeps its schedule under SOCE_DATA_DIR"
    finally:
        probe.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_compose_migrate_command_prepares_both_databases(service_databases: tuple[str, str]) -> None:
    """The migrate service's command, run here: optuna-dashboard can then open Optuna's storage as it does."""
    import optuna

    app_url, optuna_url = service_databases
    args = soce_commands(load_compose()["services"])["migrate"]
    soce = Path(sys.executable).parent / "soce"
    env = {**os.environ, "SOCE_DATABASE_URL": app_url, "OPTUNA_STORAGE_URL": optuna_url}
    for _ in range(2):  # a second run (a restarted deployment) changes nothing and succeeds
        done = subprocess.run([str(soce), *args], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    assert f"already at {HEAD}" in done.stdout and "Optuna database" in done.stdout, done.stdout
    storage = optuna.storages.RDBStorage(optuna_url, skip_table_creation=True)  # optuna-dashboard's way in
    try:
        assert storage.get_current_version() == storage.get_head_version()
        assert storage.get_all_studies() == []
    finally:
        storage.engine.dispose()
