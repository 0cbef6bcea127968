"""The `soce` command. Heavy packages are imported inside commands so `soce --help` stays fast."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from soce.errors import SoceError

app = typer.Typer(
    name="soce",
    help="SoCE: merge fine-tuned checkpoints of one base model into one better model (model soups).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def friendly(fn: F) -> F:
    """Turn our errors into one clear line on stderr and exit code 2; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SoceError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            typer.secho("interrupted; nothing was written", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="more logging")] = 0,
) -> None:
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2), format="%(levelname)s %(name)s: %(message)s"
    )


def _progress_bar(desc: str, quiet: bool, unit: str = "B"):
    from tqdm import tqdm

    bars = []

    def factory(total: int) -> Callable[[int], None]:
        bar = tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=desc, disable=quiet, file=sys.stderr)
        bars.append(bar)
        return bar.update

    def close() -> None:
        for b in bars:
            b.close()

    return factory, close


@app.command()
@friendly
def merge(
    config: Annotated[
        Path,
        typer.Argument(
            help="our recipe YAML, or a mergekit config (linear, task_arithmetic, "
            "ties, dare_linear, dare_ties)"
        ),
    ],
    out: Annotated[Path, typer.Argument(help="output model folder")],
    force: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
    dtype: Annotated[str | None, typer.Option(help="output dtype: float32, bfloat16 or float16")] = None,
    shard_size: Annotated[str | None, typer.Option(help="largest output shard, e.g. 5GB or 500MB")] = None,
    allow_pickle: Annotated[
        bool, typer.Option(help="allow pytorch_model.bin (loaded with weights_only=True)")
    ] = False,
    check_finite: Annotated[bool, typer.Option(help="fail if the soup has NaN or Inf values")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Merge the checkpoints of CONFIG into a model folder OUT (streamed, one tensor chunk at a time)."""
    from soce.errors import RecipeError
    from soce.merging import load_recipe, write_soup
    from soce.schemas.merge import parse_size

    recipe = load_recipe(config)
    update: dict[str, Any] = {}
    if dtype:
        from soce.merging.recipes import _dtype_name

        update["dtype"] = _dtype_name(dtype, "--dtype: ")
    if shard_size:
        try:
            update["shard_size"] = parse_size(shard_size)
        except ValueError as e:
            raise RecipeError(f"--shard-size: {e}") from None
    if allow_pickle:
        update["allow_pickle"] = True
    recipe = recipe.model_copy(update=update)
    factory, close = _progress_bar("merging", quiet)
    try:
        soup = write_soup(recipe, out, force=force, progress=factory, check_finite=check_finite)
    finally:
        close()
    typer.echo(
        f"wrote {soup.path} ({soup.method}, {len(soup.ingredients)} candidates, {soup.num_tensors} tensors, "
        f"{soup.nbytes / 1e6:.1f} MB {soup.dtype} in {soup.shards} shard(s), {soup.seconds:.2f}s)"
    )


@app.command()
@friendly
def inspect(
    paths: Annotated[list[Path], typer.Argument(help="model folders or .safetensors files")],
    scan: Annotated[bool, typer.Option(help="also scan every tensor for NaN and Inf")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="allow pytorch_model.bin (weights_only=True)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Architecture, size, dtype and content hash of each checkpoint, and whether they can be merged."""
    from soce.checkpoints import CODE_TO_NAME, Checkpoint, check_compatibility, checkpoint_hash, scan_finite

    ckpts = [Checkpoint.open(p, allow_pickle=allow_pickle) for p in paths]
    rows = []
    for c in ckpts:
        cfg = c.config or {}
        row = {
            "path": str(c.path),
            "architecture": ",".join(cfg.get("architectures") or []) or cfg.get("model_type") or "unknown",
            "layers": cfg.get("num_hidden_layers"),
            "hidden_size": cfg.get("hidden_size"),
            "vocab_size": cfg.get("vocab_size"),
            "tied_embeddings": c.tied_embeddings,
            "parameters": c.num_parameters,
            "dtype": CODE_TO_NAME.get(c.dtype, c.dtype),
            "bytes": c.nbytes,
            "files": len(c.weight_files),
            "format": "pickle" if c.is_pickle else "safetensors",
            "content_hash": checkpoint_hash(c),
        }
        if scan:
            row["non_finite_tensors"] = scan_finite(c)
        rows.append(row)
    report = check_compatibility(ckpts)
    verdict = {
        "compatible": report.ok,
        "problems": [{"kind": p.kind, "message": p.message} for p in report.problems],
    }
    if as_json:
        typer.echo(json.dumps({"checkpoints": rows, "compatibility": verdict}, indent=2))
    else:
        for row in rows:
            typer.secho(row["path"], bold=True)
            typer.echo(
                f"  {row['architecture']}, {row['layers']} layers, hidden {row['hidden_size']}, "
                f"vocab {row['vocab_size']}{', tied embeddings' if row['tied_embeddings'] else ''}\n"
                f"  {row['parameters']:,} parameters, {row['dtype']}, {row['bytes'] / 1e6:.1f} MB in "
                f"{row['files']} {row['format']} file(s)\n  content hash {row['content_hash']}"
            )
            if scan:
                bad = row["non_finite_tensors"]
                typer.echo(f"  NaN/Inf: {', '.join(bad) if bad else 'none'}")
        if len(rows) > 1:
            if report.ok:
                typer.secho(f"compatible: these {len(rows)} checkpoints can be merged", fg=typer.colors.GREEN)
            else:
                typer.secho("not compatible:", fg=typer.colors.RED)
                for p in report.problems:
                    typer.echo(f"  [{p.kind}] {p.message}")
    if not report.ok or (scan and any(r["non_finite_tensors"] for r in rows)):
        raise typer.Exit(1)


zoo_app = typer.Typer(
    help="The reference model zoo: a tiny base, fine-tuned candidates and a category benchmark.",
    no_args_is_help=True,
)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("build")
@friendly
def zoo_build(
    out: Annotated[Path, typer.Argument(help="folder to build the zoo in")],
    size: Annotated[str, typer.Option(help="tiny (under a minute, for tests) or demo (minutes)")] = "tiny",
    seed: Annotated[int, typer.Option(help="the same seed builds the same zoo, bit for bit")] = 0,
    pool: Annotated[
        str,
        typer.Option(help="default (specialists a soup can beat) or gentle (souping does not help)"),
    ] = "default",
    force: Annotated[bool, typer.Option(help="rebuild OUT if it exists")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Build a base model pretrained on synthetic tasks, candidates fine-tuned from it, and lm-eval tasks."""
    from soce.zoo.build import POOLS, SIZES, build_zoo

    if size not in SIZES:
        _fail(f"--size must be one of {', '.join(SIZES)}, not {size!r}")
    if pool not in POOLS:
        _fail(f"--pool must be one of {', '.join(POOLS)}, not {pool!r}")
    factory, close = _progress_bar("training", quiet, unit="step")
    try:
        path = build_zoo(out, size=size, seed=seed, pool=pool, force=force, progress=factory)
    finally:
        close()
    typer.echo(f"built the {size} zoo in {path}: suite.yaml, tasks/, base/ and candidates/")


@app.command()
def methods() -> None:
    """List the merge methods and what they do."""
    from soce.merging import METHODS

    for name, cls in METHODS.items():
        typer.echo(f"{name:16s} {cls.summary}")


def _quiet_libraries() -> None:
    """lm-eval's and Hugging Face's own bars and notes only with -v."""
    import os

    if logging.getLogger().level > logging.INFO:
        for var in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
            os.environ[var] = "1"
        for name in ("lm_eval", "datasets", "transformers", "optuna"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _print_result(result: Any) -> None:
    from workers.summary import result_table

    typer.echo("")
    typer.echo(result_table(result.report))
    typer.echo("")
    typer.echo(f"soup:   {result.soup_path}")
    typer.echo(f"report: {result.report_html}  (and {result.report_json.name})")


@app.command()
@friendly
def run(
    recipe: Annotated[Path, typer.Argument(help="run recipe YAML: candidates, suite, sampler, output")],
    n_trials: Annotated[int | None, typer.Option(help="override the recipe's n_trials")] = None,
    output: Annotated[Path | None, typer.Option(help="override the recipe's output folder")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Run the whole SoCE pipeline locally: score, correlations, experts, weight search, soup, report."""
    from soce.schemas.run import RunRecipe

    spec = RunRecipe.from_file(recipe)
    update: dict[str, Any] = {}
    if n_trials is not None:
        update["n_trials"] = n_trials
    if output is not None:
        update["output"] = str(output.expanduser().resolve())
    if update:
        spec = RunRecipe.parse({**spec.model_dump(), **update}, where=f"{recipe}: ")
    _quiet_libraries()
    from workers.pipeline import run_local
    from workers.progress import Stages

    _print_result(run_local(spec, stages=Stages(quiet=quiet)))


@app.command()
@friendly
def demo(
    size: Annotated[str, typer.Option(help="demo (a few minutes) or tiny (under a minute)")] = "demo",
    out: Annotated[Path, typer.Option(help="folder for the soup and its report")] = Path("soce-demo"),
    pool: Annotated[
        str, typer.Option(help="default, or gentle: a pool where souping does not help (the verdict says so)")
    ] = "default",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Build (or reuse) the reference zoo and run the whole SoCE pipeline on it; prints the verdict and
    the test table."""
    from soce.zoo.build import POOLS, SIZES

    if size not in SIZES:
        _fail(f"--size must be one of {', '.join(SIZES)}, not {size!r}")
    if pool not in POOLS:
        _fail(f"--pool must be one of {', '.join(POOLS)}, not {pool!r}")
    _quiet_libraries()
    from workers.demo import run_demo

    _print_result(run_demo(size, out, quiet=quiet, pool=pool))


@app.command()
@friendly
def score(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="checkpoint folders (with --evaluator external: names in the file)")
    ],
    suite: Annotated[Path, typer.Option(help="suite YAML: categories of lm-eval tasks, dev and test splits")],
    split: Annotated[str, typer.Option(help="dev (to choose anything) or test (held out, to report)")],
    evaluator: Annotated[str, typer.Option(help="lm_eval (run tasks) or external (a file)")] = "lm_eval",
    scores: Annotated[Path | None, typer.Option(help="CSV or JSON scores for --evaluator external")] = None,
    out: Annotated[Path, typer.Option(help="folder for the score matrix as JSON and CSV")] = Path("scores"),
    batch_size: Annotated[int | None, typer.Option(help="lm-eval batch size [SOCE_EVAL_BATCH_SIZE]")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda:0 [default: cuda]")] = None,
    cache: Annotated[bool, typer.Option(help="reuse scores stored for the same checkpoint content")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Score checkpoints on a suite split: prints the candidates x categories matrix, writes JSON and CSV."""
    import os

    from soce.errors import SuiteError
    from soce.schemas.suite import SuiteSpec

    if split not in ("dev", "test"):
        raise SuiteError(f"--split must be dev or test, not {split!r}")
    spec = SuiteSpec.from_file(suite)
    verbose = logging.getLogger().level <= logging.INFO
    if not verbose:  # lm-eval's own bars and notes only with -v
        for var in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
            os.environ[var] = "1"
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from tqdm import tqdm

    from evaluators import TaskEvaluator, build_evaluator
    from soce.schemas.scores import ScoreMatrix
    from soce.score_cache import score_checkpoint

    options: dict[str, Any] = {"scores_file": scores} if evaluator == "external" else {}
    if evaluator == "lm_eval":
        options = {"batch_size": batch_size, "device": device, "show_progress": not quiet and verbose}
    backend = build_evaluator(evaluator, **options)
    total = len(checkpoints) * len(spec.tasks)
    desc = f"scoring {spec.split_name(split)}"
    bar = tqdm(total=total, unit="task", desc=desc, disable=quiet, file=sys.stderr)
    results = []
    try:
        for ckpt in checkpoints:
            bar.set_postfix_str(ckpt.name or str(ckpt))
            if isinstance(backend, TaskEvaluator):
                got = score_checkpoint(backend, ckpt, spec, split, progress=bar.update, use_cache=cache)
            else:
                got = backend.score(ckpt, spec, split, progress=bar.update)
            results.append(got)
    finally:
        bar.close()
    matrix = ScoreMatrix.from_scores(results)
    names = [Path(c).name or c for c in matrix.candidates]
    labels = names if len(set(names)) == len(names) else matrix.candidates
    width = max(len(s) for s in [*labels, "candidate"])
    typer.echo(f"{'candidate':{width}s}  " + "  ".join(f"{c:>10s}" for c in [*matrix.categories, "average"]))
    for label, row, avg, res in zip(labels, matrix.values, matrix.average, results, strict=True):
        hit = f"  ({res.cached_tasks}/{len(res.tasks)} cached)" if res.cached_tasks else ""
        typer.echo(f"{label:{width}s}  " + "  ".join(f"{v:10.4f}" for v in [*row, avg]) + hit)
    if isinstance(backend, TaskEvaluator):
        typer.echo(f"{sum(r.cached_tasks for r in results)} of {total} task scores came from the score cache")
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{spec.name}-{split}"
    stem.with_suffix(".json").write_text(matrix.model_dump_json(indent=2) + "\n")
    stem.with_suffix(".csv").write_text(matrix.to_csv())
    typer.echo(f"wrote {stem}.json and {stem}.csv")


# --- the app database and API keys (`soce db ...`, `soce apikey ...`) ---

db_app = typer.Typer(help="The app database: Alembic migrations of our tables.", no_args_is_help=True)
app.add_typer(db_app, name="db")
apikey_app = typer.Typer(help="API keys for the service's write endpoints.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL; default: SOCE_DATABASE_URL, or the embedded SQLite"),
]


def _settings_url() -> str:
    from soce.config import get_settings

    return get_settings().app_database_url()


def _reachable(action: Callable[[], Any], engine: Any) -> Any:
    """Run `action`, turning a connection failure into one line that names the database."""
    from sqlalchemy.exc import SQLAlchemyError

    from soce.db.engine import describe
    from soce.errors import DatabaseError

    try:
        return action()
    except SQLAlchemyError as e:
        cause = getattr(e, "orig", None) or e  # the driver's own message, without SQLAlchemy's prefix
        first = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), type(e).__name__)
        raise DatabaseError(f"database {describe(engine)} cannot be reached ({first})") from None


def _keys_engine(database_url: str | None) -> Any:
    """The app engine, with its api_keys table there (embedded SQLite migrates itself)."""
    from sqlalchemy import inspect

    from soce.db import get_engine
    from soce.db.engine import describe
    from soce.errors import DatabaseError

    engine = get_engine(database_url)
    if not _reachable(lambda: inspect(engine).has_table("api_keys"), engine):
        raise DatabaseError(f"database {describe(engine)} has no api_keys table; run `soce db upgrade` first")
    return engine


@db_app.command("upgrade")
@friendly
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
    database_url: DatabaseUrl = None,
    optuna: Annotated[
        bool,
        typer.Option(
            "--optuna", help="also create or upgrade Optuna's own database (OPTUNA_STORAGE_URL) with Optuna"
        ),
    ] = False,
) -> None:
    """Migrate the app database up to REVISION (default: the newest); with --optuna, Optuna's too."""
    from soce.db import create_app_engine
    from soce.db.engine import describe
    from soce.db.migrate import current_revision, upgrade

    engine = create_app_engine(database_url or _settings_url())
    try:
        before = _reachable(lambda: current_revision(engine), engine)
        upgrade(engine, revision)
        after = current_revision(engine)
    finally:
        engine.dispose()
    change = f"already at {after}" if before == after else f"{before or 'empty'} -> {after}"
    typer.echo(f"database {describe(engine)}: {change}")
    if optuna:
        _upgrade_optuna_storage()


def _upgrade_optuna_storage() -> None:
    """Optuna's tables made or migrated by Optuna itself, before anything reads them (optuna-dashboard
    opens a storage without creating tables, and processes creating them at once can collide)."""
    import optuna
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url

    from soce.config import get_settings
    from soce.errors import DatabaseError

    url = get_settings().optuna_url()
    where = f"Optuna database {make_url(url).render_as_string(hide_password=True)}"
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        probe = create_engine(url)
        try:
            existed = inspect(probe).has_table("studies")
        finally:
            probe.dispose()
        storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)  # creates missing tables
        try:
            before, head = storage.get_current_version(), storage.get_head_version()
            if before != head:
                storage.upgrade()
        finally:
            storage.engine.dispose()
    except Exception as e:  # SQLAlchemy's and Optuna's own errors alike: one line naming the database
        cause = getattr(e, "orig", None) or e  # the driver's own message, without SQLAlchemy's prefix
        first = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), type(e).__name__)
        raise DatabaseError(f"{where} cannot be prepared ({first})") from None
    if before != head:
        typer.echo(f"{where}: {before} -> {head}")
    else:
        typer.echo(f"{where}: {'already at' if existed else 'created at'} {head}")


@db_app.command("current")
@friendly
def db_current(database_url: DatabaseUrl = None) -> None:
    """Print the app database's schema revision and whether it is the newest."""
    from alembic.script import ScriptDirectory

    from soce.db import create_app_engine
    from soce.db.engine import describe
    from soce.db.migrate import alembic_config, current_revision

    engine = create_app_engine(database_url or _settings_url())
    try:
        current = _reachable(lambda: current_revision(engine), engine)
        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    finally:
        engine.dispose()
    where = f"database {describe(engine)}"
    if current is None:
        typer.echo(f"{where}: empty; `soce db upgrade` migrates it to {head}")
    else:
        typer.echo(f"{where}: {current}" + (" (head)" if current == head else f" (head is {head})"))


@apikey_app.command("create")
@friendly
def apikey_create(
    name: Annotated[str, typer.Option("--name", help="a unique name: who or what uses the key")],
    read_only: Annotated[bool, typer.Option("--read-only", help="the key may read but not write")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API key: prints it once on stdout; only its hash is stored."""
    from soce.db import create_api_key, session_scope

    with session_scope(_keys_engine(database_url)) as session:
        row, key = create_api_key(session=session, name=name, read_only=read_only)
        prefix = row.prefix
    typer.echo(f"created API key {name!r} ({prefix}…); it is shown only now:", err=True)
    typer.echo(key)


@apikey_app.command("list")
@friendly
def apikey_list(database_url: DatabaseUrl = None) -> None:
    """List API keys by name and prefix (the keys themselves are not stored)."""
    from soce.db import list_api_keys, session_scope

    with session_scope(_keys_engine(database_url)) as session:
        rows = list_api_keys(session=session)
    if not rows:
        typer.echo("no API keys; create one with `soce apikey create --name NAME`")
        return

    def when(t: Any) -> str:
        return t.strftime("%Y-%m-%d %H:%M") if t else "-"

    width = max(len("name"), *(len(r.name) for r in rows))
    header = ["prefix".ljust(14), "access".ljust(10), "created".ljust(16), "last used".ljust(16), "revoked"]
    typer.echo(f"{'name':{width}s}  " + "  ".join(header))
    for r in rows:
        access = "read" if r.read_only else "read-write"
        typer.echo(
            f"{r.name:{width}s}  {r.prefix + '…':14s}  {access:10s}  {when(r.created_at):16s}  "
            f"{when(r.last_used_at):16s}  {when(r.revoked_at)}"
        )


@apikey_app.command("revoke")
@friendly
def apikey_revoke(
    name: Annotated[str, typer.Argument(help="the key's name")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke an API key: requests with it are refused from now on."""
    from soce.db import revoke_api_key, session_scope

    with session_scope(_keys_engine(database_url)) as session:
        row = revoke_api_key(session=session, name=name)
        revoked_at = row.revoked_at
    typer.echo(f"revoked API key {name!r} ({revoked_at:%Y-%m-%d %H:%M} UTC)")


# --- soce schedule: recurring runs with a promotion gate (API: /v1/schedules) ----------------------
schedule_app = typer.Typer(help="Scheduled soups (nightly runs) and their champions.", no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("create")
@friendly
def schedule_create(
    name: Annotated[str, typer.Option("--name", help="a unique name; the champion pointer's file name")],
    cron: Annotated[str, typer.Option("--cron", help="five fields, e.g. '0 2 * * *'")],
    suite_id: Annotated[int, typer.Option("--suite-id", help="a stored suite's id")],
    timezone: Annotated[str, typer.Option("--timezone", help="IANA time zone of the cron")] = "UTC",
    tag: Annotated[str | None, typer.Option("--tag", help="candidates carrying this tag")] = None,
    glob: Annotated[str | None, typer.Option("--glob", help="absolute glob of checkpoint folders")] = None,
    recipe: Annotated[str, typer.Option("--recipe", help="search settings as JSON, like a job's")] = "{}",
    min_improvement: Annotated[
        float, typer.Option(help="promote if the interval's lower bound beats it")
    ] = 0.0,
    webhook: Annotated[str | None, typer.Option("--webhook", help="URL a run's summary is POSTed to")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a schedule (checked like POST /v1/schedules)."""
    import json
    from datetime import UTC, datetime

    from pydantic import ValidationError

    from api.routes.schedules import schedule_row
    from api.schemas import ScheduleCreate
    from soce.db import session_scope
    from soce.db.models import Suite

    try:
        body = ScheduleCreate.model_validate(
            {
                "name": name,
                "cron": cron,
                "timezone": timezone,
                "recipe_template": {**json.loads(recipe), "suite_id": suite_id},
                "candidate_source": {"tag": tag, "glob": glob},
                "promotion_policy": {"min_improvement": min_improvement},
                "webhook_url": webhook,
            }
        )
    except (ValidationError, json.JSONDecodeError) as e:
        raise typer.BadParameter(str(e)) from None
    with session_scope(_keys_engine(database_url)) as session:
        if session.get(Suite, suite_id) is None:
            raise typer.BadParameter(f"suite {suite_id} does not exist", param_hint="--suite-id")
        row = schedule_row(body, datetime.now(UTC))
        session.add(row)
        session.flush()
        typer.echo(f"created schedule {row.id} {name!r}; next run {row.next_run_at:%Y-%m-%d %H:%M} UTC")


@schedule_app.command("update")
@friendly
def schedule_update(
    name: Annotated[str, typer.Argument(help="the schedule's name")],
    cron: Annotated[str | None, typer.Option("--cron", help="five fields, e.g. '0 2 * * *'")] = None,
    timezone: Annotated[str | None, typer.Option("--timezone", help="IANA time zone of the cron")] = None,
    enabled: Annotated[bool | None, typer.Option("--enable/--disable", help="start runs or not")] = None,
    min_improvement: Annotated[
        float | None, typer.Option(help="promote if the interval's lower bound beats it")
    ] = None,
    webhook: Annotated[
        str | None, typer.Option("--webhook", help="URL a run's summary is POSTed to; '' removes it")
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Change a schedule (checked like PATCH /v1/schedules/{id}); a new cron or time zone plans the
    next run from now."""
    from datetime import UTC, datetime

    from pydantic import ValidationError
    from sqlalchemy import select

    from api.routes.schedules import apply_update
    from api.schemas import ScheduleUpdate
    from soce.db import session_scope
    from soce.db.models import Schedule

    fields: dict[str, object] = {"cron": cron, "timezone": timezone, "enabled": enabled}
    fields = {k: v for k, v in fields.items() if v is not None}
    if webhook is not None:
        fields["webhook_url"] = webhook or None
    with session_scope(_keys_engine(database_url)) as session:
        row = session.scalar(select(Schedule).where(Schedule.name == name))
        if row is None:
            raise typer.BadParameter(f"no schedule is named {name!r} (see `soce schedule list`)")
        if min_improvement is not None:
            fields["promotion_policy"] = {**row.promotion_policy, "min_improvement": min_improvement}
        try:
            body = ScheduleUpdate.model_validate(fields)
        except ValidationError as e:
            raise typer.BadParameter(str(e)) from None
        apply_update(row, body, datetime.now(UTC))
        when = f"{row.next_run_at:%Y-%m-%d %H:%M} UTC" if row.next_run_at else "-"
        state = "enabled" if row.enabled else "disabled"
        typer.echo(f"updated schedule {row.id} {name!r}: {row.cron!r} {row.timezone}, {state}, next {when}")


@schedule_app.command("list")
@friendly
def schedule_list(database_url: DatabaseUrl = None) -> None:
    """List schedules: cron, time zone, enabled, next run and champion soup."""
    from sqlalchemy import select

    from soce.db import session_scope
    from soce.db.models import Schedule

    with session_scope(_keys_engine(database_url)) as session:
        rows = session.scalars(select(Schedule).order_by(Schedule.name)).all()
        if not rows:
            typer.echo("no schedules; create one with `soce schedule create`")
            return
        for r in rows:
            when = f"{r.next_run_at:%Y-%m-%d %H:%M}" if r.next_run_at else "-"
            typer.echo(
                f"{r.id:4d}  {r.name}  {r.cron!r} {r.timezone}  {'enabled' if r.enabled else 'disabled'}  "
                f"next {when}  champion {r.champion_soup_id or '-'}"
            )


# --- soce worker: a Celery worker of the service (workers.celery_app) -------------------------------
WORKER_QUEUES = ("gpu", "cpu")


@app.command()
@friendly
def worker(
    queues: Annotated[
        str, typer.Option("--queues", "-Q", help="comma-separated queues to consume: gpu, cpu or gpu,cpu")
    ] = "gpu,cpu",
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="tasks at once (1 per GPU on gpu queues)")
    ] = 1,
    pool: Annotated[
        str, typer.Option("--pool", help="Celery pool: prefork (default), solo or threads")
    ] = "prefork",
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Celery log level")] = "INFO",
    hostname: Annotated[
        str | None, typer.Option("--hostname", "-n", help="worker name (default: celery@host)")
    ] = None,
) -> None:
    """Run a Celery worker on the service's queues (Redis broker, app database and Optuna storage)."""
    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in wanted if q not in WORKER_QUEUES]
    if not wanted or unknown:
        _fail(f"--queues {queues!r}: use gpu, cpu or gpu,cpu")
    if pool not in ("prefork", "solo", "threads"):
        _fail(f"--pool {pool!r}: use prefork, solo or threads")
    from workers.celery_app import app as celery_app

    argv = ["worker", f"--queues={','.join(wanted)}", f"--concurrency={concurrency}", f"--pool={pool}"]
    argv += [f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    celery_app.worker_main(argv=argv)


# --- soce beat: Celery beat, sending the app's periodic tasks (one beat per deployment) -------------


@app.command()
@friendly
def beat(
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Celery log level")] = "INFO",
    schedule: Annotated[
        Path | None,
        typer.Option("--schedule", "-s", help="beat's state file (default: under SOCE_DATA_DIR)"),
    ] = None,
) -> None:
    """Run Celery beat for the service's periodic tasks (Redis broker); run one per deployment."""
    from soce.config import get_settings
    from workers.celery_app import app as celery_app

    path = schedule or get_settings().data_dir / "celerybeat-schedule"
    path.parent.mkdir(parents=True, exist_ok=True)
    # remote control lets `celery inspect ping -d celerybeat@HOST` health-check beat (docker-compose.yml)
    argv = ["beat", f"--loglevel={loglevel}", f"--schedule={path}", "--enable-remote-control"]
    code = celery_app.start(argv=argv)
    if code:
        raise typer.Exit(code)


# --- soce serve: the REST API (api.app:create_app under uvicorn) -----------------------------------


@app.command()
@friendly
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the REST API (OpenAPI at /docs) on the configured database and broker."""
    import uvicorn

    uvicorn.run(
        "api.app:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level
    )


if __name__ == "__main__":
    app()
