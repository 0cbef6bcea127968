"""`soce schedule create|update|list`: recurring runs with a promotion gate (the API's /v1/schedules)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from soce.cli._common import DatabaseUrl, friendly, migrated_engine

schedule_app = typer.Typer(help="Scheduled soups (nightly runs) and their champions.", no_args_is_help=True)


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
    from pydantic import ValidationError

    from soce.db import session_scope
    from soce.db.schedules import create_schedule
    from soce.errors import ScheduleError
    from soce.schemas.schedule import ScheduleCreate

    try:
        spec = ScheduleCreate.model_validate(
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
    with session_scope(migrated_engine(database_url)) as session:
        try:
            row = create_schedule(session=session, spec=spec)
        except ScheduleError as e:  # the suite is not stored
            raise typer.BadParameter(str(e), param_hint="--suite-id") from None
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
    from pydantic import ValidationError

    from soce.db import session_scope
    from soce.db.schedules import get_schedule_by_name, update_schedule
    from soce.schemas.schedule import ScheduleUpdate

    fields: dict[str, object] = {"cron": cron, "timezone": timezone, "enabled": enabled}
    fields = {k: v for k, v in fields.items() if v is not None}
    if webhook is not None:
        fields["webhook_url"] = webhook or None
    with session_scope(migrated_engine(database_url)) as session:
        row = get_schedule_by_name(session=session, name=name)
        if row is None:
            raise typer.BadParameter(f"no schedule is named {name!r} (see `soce schedule list`)")
        if min_improvement is not None:  # the option changes one field of the stored policy
            fields["promotion_policy"] = {**row.promotion_policy, "min_improvement": min_improvement}
        try:
            spec = ScheduleUpdate.model_validate(fields)
        except ValidationError as e:
            raise typer.BadParameter(str(e)) from None
        update_schedule(session=session, schedule=row, spec=spec)
        when = f"{row.next_run_at:%Y-%m-%d %H:%M} UTC" if row.next_run_at else "-"
        state = "enabled" if row.enabled else "disabled"
        typer.echo(f"updated schedule {row.id} {name!r}: {row.cron!r} {row.timezone}, {state}, next {when}")


@schedule_app.command("list")
@friendly
def schedule_list(database_url: DatabaseUrl = None) -> None:
    """List schedules: cron, time zone, enabled, next run and champion soup."""
    from soce.db import session_scope
    from soce.db.schedules import list_schedules

    with session_scope(migrated_engine(database_url)) as session:
        rows = list_schedules(session=session)
        if not rows:
            typer.echo("no schedules; create one with `soce schedule create`")
            return
        for r in rows:
            when = f"{r.next_run_at:%Y-%m-%d %H:%M}" if r.next_run_at else "-"
            typer.echo(
                f"{r.id:4d}  {r.name}  {r.cron!r} {r.timezone}  {'enabled' if r.enabled else 'disabled'}  "
                f"next {when}  champion {r.champion_soup_id or '-'}"
            )


def register(app: typer.Typer) -> None:
    """Add the `schedule` group to `app`."""
    app.add_typer(schedule_app, name="schedule")
