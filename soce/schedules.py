"""Cron expressions and time zones of schedules.

An expression has five fields (minute hour day-of-month month day-of-week) with month and day names
(`jan`, `mon-fri`), or is one of the shortcuts in `SHORTCUTS`. croniter parses it and lists its times;
this module reads them in the schedule's time zone and names the field at fault in its errors.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from soce.errors import ScheduleError

__all__ = ["SHORTCUTS", "Cron", "ScheduleError", "next_fire", "time_zone"]

SHORTCUTS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")

# field name, the values it takes
_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31"),
    ("month", "1-12 or jan-dec"),
    ("day of week", "0-7 (0 and 7 are Sunday) or sun-sat"),
)
_DAY_OF_MONTH, _DAY_OF_WEEK = 2, 4
_SEARCH_YEARS = 50  # an expression with no time in this many years never fires

# croniter reads `5-5` as the whole cycle; cron means the one value
_ONE_VALUE_RANGE = re.compile(r"^([^-/]+)-\1(/\d+)?$", re.IGNORECASE)
# croniter runs `start/step` up to Saturday (6); cron runs day-of-week steps up to 7, Sunday again
_DAY_OF_WEEK_STEP = re.compile(r"^([^-/*]+)/(\d+)$")
# croniter's hashed (H) and random (R) values: a random one would change every time the cron is read
_HASHED = re.compile(r"^[hr](\(\d+-\d+\))?(/\d+)?$", re.IGNORECASE)


def _refusal(expression: str) -> str | None:
    """Why croniter refuses `expression`, or None when it reads it."""
    try:
        croniter(expression)
    except (CroniterError, ValueError, TypeError, LookupError) as e:
        return str(e) or type(e).__name__
    return None


def _cron_field(text: str, index: int) -> str:
    """Field `index` as croniter reads it with cron's meaning."""
    parts = text.split(",")
    if index == _DAY_OF_WEEK:
        parts = [_DAY_OF_WEEK_STEP.sub(r"\1-7/\2", p) for p in parts]
    return ",".join(_ONE_VALUE_RANGE.sub(r"\1", p) for p in parts)


def _field_error(expression: str, index: int, text: str, why: str = "") -> ScheduleError:
    name, values = _FIELDS[index]
    return ScheduleError(
        f"cron {expression!r}: {name} field {text!r} is not valid{f' ({why})' if why else ''}; "
        f"give values in {values}, lists a,b, ranges a-b or steps */n"
    )


def _checked(expression: str, fields: list[str]) -> list[str]:
    """The five `fields` as croniter reads them, or a ScheduleError naming the first bad field."""
    parts = []
    for index, text in enumerate(fields):
        if any(_HASHED.match(p) for p in text.split(",")):
            raise _field_error(expression, index, text, "hashed (H) and random (R) values are not supported")
        parts.append(_cron_field(text, index))
    why = _refusal(" ".join(parts))
    if why is None:
        return parts
    for index, part in enumerate(parts):  # the first field croniter refuses on its own
        if _refusal(" ".join(part if i == index else "*" for i in range(5))) is not None:
            raise _field_error(expression, index, fields[index])
    raise ScheduleError(f"cron {expression!r} is not valid: {why}")  # fields fine alone, not together


class Cron:
    """A parsed cron expression; `next_after` finds the next fire time in a time zone."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        fields = expression.split()
        if len(fields) == 1 and fields[0].startswith("@"):
            if fields[0].lower() not in SHORTCUTS:
                raise ScheduleError(
                    f"cron {expression!r}: unknown shortcut; give one of {', '.join(SHORTCUTS)}"
                )
            self.expressions = [fields[0].lower()]  # croniter reads the shortcuts itself
            return
        if len(fields) != 5:
            raise ScheduleError(
                f"cron {expression!r}: give 5 fields (minute hour day-of-month month day-of-week) "
                f"or a shortcut such as @daily, got {len(fields)}"
            )
        joined = _checked(expression, fields)
        restricted = [joined[i] not in ("*", "?") for i in (_DAY_OF_MONTH, _DAY_OF_WEEK)]
        if all(restricted):
            # cron's rule: when both day fields are restricted, a day matching either one fires
            by_day = [*joined[:_DAY_OF_WEEK], "*"]
            by_weekday = [*joined[:_DAY_OF_MONTH], "*", *joined[_DAY_OF_MONTH + 1 :]]
            self.expressions = [" ".join(by_day), " ".join(by_weekday)]
        else:
            self.expressions = [" ".join(joined)]

    def _wall_times(self, start: datetime) -> Iterator[datetime]:
        """The expression's wall-clock times (naive) after `start` (naive), ascending."""
        return heapq.merge(
            *(
                croniter(e, start, max_years_between_matches=_SEARCH_YEARS).all_next(datetime)
                for e in self.expressions
            )
        )

    def next_after(self, after: datetime, tz: ZoneInfo) -> datetime:
        """The first fire time strictly after `after` (aware), in UTC.

        The fields are read in `tz`'s wall clock: a time a DST change skips fires at the instant the
        offset before the change gives it. A time that occurs twice fires at its first occurrence, or at
        its second on the day of `after` when `after` lies in the repeated hour's second pass.
        """
        local = after.astimezone(tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None, fold=0)
        # an earlier wall time can still fall after `after` when the clock jumped forward since midnight
        offset, midnight_offset = local.utcoffset(), midnight.replace(tzinfo=tz).utcoffset()
        assert offset is not None and midnight_offset is not None  # a ZoneInfo always has one
        start = max(midnight, local.replace(tzinfo=None) - max(offset - midnight_offset, timedelta(0)))
        for wall in self._wall_times(start - timedelta(minutes=1)):
            fold = local.fold if wall.date() == local.date() else 0
            fire = wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)
            if fire > after:
                return fire
        raise ScheduleError(
            f"cron {self.expression!r} never fires: no date in {_SEARCH_YEARS} years matches its day "
            "and month fields"
        )


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`, or a ScheduleError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r}; give an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from None


def next_fire(cron: str, timezone: str, after: datetime) -> datetime:
    """The next time (UTC) the schedule `cron` in `timezone` fires after `after`."""
    return Cron(cron).next_after(after, time_zone(timezone))
