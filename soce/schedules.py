"""Cron expressions (five fields: minute hour day-of-month month day-of-week) and time zones of schedules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from soce.errors import SoceError

# field name, lowest, highest
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)


class ScheduleError(SoceError):
    """A schedule's cron expression or time zone is not valid."""


def _field(text: str, name: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if body == "*":
                start, end = low, high
            elif "-" in body:
                a, b = body.split("-", 1)
                start, end = int(a), int(b)
            else:
                start = int(body)
                end = high if step_text else start
        except ValueError:
            raise ScheduleError(
                f"cron {name} field {text!r}: {part!r} is not a number, a range or */step"
            ) from None
        if step < 1 or not low <= start <= end <= high:
            raise ScheduleError(f"cron {name} field {text!r}: values must lie in {low}-{high}, steps >= 1")
        values.update(range(start, end + 1, step))
    return values


class Cron:
    """A parsed five-field cron expression; `next_after` finds the next fire time in a time zone."""

    def __init__(self, expression: str) -> None:
        parts = expression.split()
        if len(parts) != 5:
            raise ScheduleError(
                f"cron {expression!r}: give 5 fields (minute hour day-of-month month day-of-week), "
                f"got {len(parts)}"
            )
        sets = [_field(p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)]
        self.minutes, self.hours, self.days, self.months, dows = sets
        self.weekdays = {d % 7 for d in dows}  # 0 and 7 are both Sunday
        # cron's rule: when both day fields are restricted, a day matching either one fires
        self.any_day, self.any_weekday = parts[2] == "*", parts[4] == "*"

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        by_day = day.day in self.days
        by_weekday = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return by_day and by_weekday
        return by_day or by_weekday

    def next_after(self, after: datetime, tz: ZoneInfo) -> datetime:
        """The first fire time strictly after `after` (aware), in UTC."""
        local = after.astimezone(tz)
        day = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
        for _ in range(366 * 8):  # Feb 29 on a given weekday can be years away
            if self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        fire = day.replace(hour=hour, minute=minute).replace(tzinfo=tz).astimezone(UTC)
                        if fire > after:
                            return fire
            day += timedelta(days=1)
        raise ScheduleError("cron expression never fires")


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
