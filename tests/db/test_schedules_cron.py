"""Schedules' cron expressions (soce.schedules): month and day names, @daily-style shortcuts, errors that
name the field at fault, next fire times across month ends, and how a time zone's DST changes are read.
No database: these are the rules the API, the CLI and the tick share."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from soce.errors import ScheduleError
from soce.schedules import SHORTCUTS, next_fire, time_zone


def fires(cron: str, after: datetime, n: int = 5, timezone: str = "UTC") -> list[datetime]:
    """The next `n` fire times (UTC) after `after`."""
    out = []
    for _ in range(n):
        after = next_fire(cron, timezone, after)
        out.append(after)
    return out


START = datetime(2026, 1, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("named", "numbered"),
    [
        ("0 2 * * mon-fri", "0 2 * * 1-5"),
        ("0 2 * * MON,Wed,fri", "0 2 * * 1,3,5"),
        ("0 2 * * sun", "0 2 * * 0"),
        ("0 2 * * sat-sun", "0 2 * * 6,0"),
        ("0 0 1 jan *", "0 0 1 1 *"),
        ("0 0 1 JAN-MAR *", "0 0 1 1-3 *"),
        ("0 0 15 feb,Aug,dec *", "0 0 15 2,8,12 *"),
        ("30 6 * jun-aug mon", "30 6 * 6-8 1"),
    ],
)
def test_month_and_day_names_mean_their_numbers(named: str, numbered: str) -> None:
    assert fires(named, START, n=12) == fires(numbered, START, n=12)


@pytest.mark.parametrize(
    ("shortcut", "fields"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_shortcuts_mean_their_five_fields(shortcut: str, fields: str) -> None:
    assert shortcut in SHORTCUTS
    for timezone in ("UTC", "Europe/Paris"):
        assert fires(shortcut, START, timezone=timezone) == fires(fields, START, timezone=timezone)
    assert fires(shortcut.upper(), START) == fires(fields, START)


def test_shortcuts_fire_when_they_say() -> None:
    assert next_fire("@daily", "UTC", START) == datetime(2026, 1, 29, tzinfo=UTC)
    assert next_fire("@hourly", "UTC", START) == datetime(2026, 1, 28, 13, tzinfo=UTC)
    assert next_fire("@weekly", "UTC", START) == datetime(2026, 2, 1, tzinfo=UTC)  # a Sunday
    assert next_fire("@monthly", "UTC", START) == datetime(2026, 2, 1, tzinfo=UTC)
    assert next_fire("@yearly", "UTC", START) == datetime(2027, 1, 1, tzinfo=UTC)
    # read in the schedule's time zone: midnight in Paris is 23:00 UTC in winter
    assert next_fire("@daily", "Europe/Paris", START) == datetime(2026, 1, 28, 23, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("61 * * * *", ["minute field '61'", "0-59"]),
        ("0 25 * * *", ["hour field '25'", "0-23"]),
        ("* * 32 * *", ["day of month field '32'", "1-31"]),
        ("* * 0 * *", ["day of month field '0'"]),
        ("0 0 * 13 *", ["month field '13'", "jan-dec"]),
        ("0 0 * foo *", ["month field 'foo'"]),
        ("0 0 * * 8", ["day of week field '8'", "sun-sat"]),
        ("0 0 * * funday", ["day of week field 'funday'"]),
        ("*/0 * * * *", ["minute field '*/0'"]),
        ("1-5-7 * * * *", ["minute field '1-5-7'"]),
        ("0 x * * *", ["hour field 'x'"]),
        ("H 0 * * *", ["minute field 'H'", "hashed (H) and random (R)"]),
        ("0 R * * *", ["hour field 'R'", "hashed (H) and random (R)"]),
        ("* * *", ["give 5 fields", "got 3"]),
        ("0 0 * * * 2026", ["give 5 fields", "got 6"]),
        ("", ["give 5 fields", "got 0"]),
        ("@reboot", ["unknown shortcut", "@daily"]),
        ("@every 5m", ["give 5 fields", "got 2"]),
        ("0 0 30 2 *", ["never fires"]),
        ("0 0 31 4,6 *", ["never fires"]),
    ],
)
def test_invalid_expressions_name_what_is_wrong(cron: str, says: list[str]) -> None:
    with pytest.raises(ScheduleError) as error:
        next_fire(cron, "UTC", START)
    message = str(error.value)
    assert repr(cron) in message
    for words in says:
        assert words in message


def test_unknown_time_zone_is_named() -> None:
    with pytest.raises(ScheduleError, match="'Mars/Base'"):
        next_fire("0 2 * * *", "Mars/Base", START)
    with pytest.raises(ScheduleError, match="'Mars/Base'"):
        time_zone("Mars/Base")


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        # the 31st skips the months without one
        ("0 2 31 * *", datetime(2026, 1, 31, 3, 0), [datetime(2026, 3, 31, 2), datetime(2026, 5, 31, 2)]),
        # a month's first day after its last
        ("0 0 1 * *", datetime(2026, 1, 31, 23, 59), [datetime(2026, 2, 1), datetime(2026, 3, 1)]),
        ("30 23 * * *", datetime(2026, 2, 28, 23, 45), [datetime(2026, 3, 1, 23, 30)]),
        # the year's end
        ("0 0 1 jan *", datetime(2026, 12, 31, 12), [datetime(2027, 1, 1), datetime(2028, 1, 1)]),
        (
            "*/20 * * * *",
            datetime(2026, 12, 31, 23, 50),
            [datetime(2027, 1, 1, 0, 0), datetime(2027, 1, 1, 0, 20)],
        ),
        # February 29th waits for a leap year
        ("0 12 29 feb *", datetime(2026, 1, 1), [datetime(2028, 2, 29, 12), datetime(2032, 2, 29, 12)]),
        # the 30th of every month but February
        ("0 8 30 * *", datetime(2026, 1, 30, 9), [datetime(2026, 3, 30, 8)]),
        # a weekday across a month end: Friday 2026-01-30, then Monday 2026-02-02
        ("0 9 * * mon-fri", datetime(2026, 1, 30, 10), [datetime(2026, 2, 2, 9), datetime(2026, 2, 3, 9)]),
    ],
)
def test_next_fire_across_month_ends(cron: str, after: datetime, expected: list[datetime]) -> None:
    got = fires(cron, after.replace(tzinfo=UTC), n=len(expected))
    assert got == [e.replace(tzinfo=UTC) for e in expected]
    assert all(t.tzinfo == UTC for t in got)


def test_month_end_in_a_time_zone() -> None:
    # 01:00 on the 1st in Paris: 00:00 UTC in winter (CET), 23:00 UTC the day before in summer (CEST)
    after = datetime(2026, 1, 31, 23, 30, tzinfo=UTC)  # still January in UTC, February 1st in Paris
    assert fires("0 1 1 * *", after, n=4, timezone="Europe/Paris") == [
        datetime(2026, 2, 1, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 31, 23, 0, tzinfo=UTC),
        datetime(2026, 4, 30, 23, 0, tzinfo=UTC),
    ]


def test_both_day_fields_restricted_fire_on_either() -> None:
    # cron's rule: the 13th or a Friday; with one day field '*', only the other counts
    either = fires("0 0 13 * fri", datetime(2026, 2, 1, tzinfo=UTC), n=4)
    assert [t.date().isoformat() for t in either] == ["2026-02-06", "2026-02-13", "2026-02-20", "2026-02-27"]
    march = fires("0 0 13 * fri", datetime(2026, 3, 7, tzinfo=UTC), n=2)
    assert [t.date().isoformat() for t in march] == ["2026-03-13", "2026-03-20"]  # the 13th is a Friday
    fridays = fires("0 0 * * fri", datetime(2026, 3, 7, tzinfo=UTC), n=2)
    assert [t.date().isoformat() for t in fridays] == ["2026-03-13", "2026-03-20"]
    thirteenths = fires("0 0 13 * *", datetime(2026, 2, 1, tzinfo=UTC), n=2)
    assert [t.date().isoformat() for t in thirteenths] == ["2026-02-13", "2026-03-13"]


def test_cron_readings_kept_from_the_earlier_parser() -> None:
    after = datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday
    assert fires("0 5-5 * * *", after, n=2) == [
        datetime(2026, 1, 1, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 5, tzinfo=UTC),
    ]
    # day-of-week steps run up to 7, Sunday: Mon, Wed, Fri, Sun
    weekdays = [t.strftime("%a") for t in fires("0 0 * * 1/2", after, n=4)]
    assert weekdays == ["Fri", "Sun", "Mon", "Wed"]
    assert (
        fires("0 0 * * 7", after, n=1) == fires("0 0 * * 0", after, n=1) == fires("0 0 * * sun", after, n=1)
    )
    assert fires("  0   2 * *  * ", after, n=2) == fires("0 2 * * *", after, n=2)


def test_dst_changes_are_read_as_before() -> None:
    # Paris springs forward at 02:00 on 2026-03-29: 02:30 does not exist and fires at 03:30 (01:30 UTC)
    spring = fires("30 2 * * *", datetime(2026, 3, 28, 12, tzinfo=UTC), n=3, timezone="Europe/Paris")
    assert spring == [
        datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
        datetime(2026, 3, 31, 0, 30, tzinfo=UTC),
    ]
    # and falls back at 03:00 on 2026-10-25: 02:30 occurs twice and fires once, at the first
    autumn = fires("30 2 * * *", datetime(2026, 10, 24, 12, tzinfo=UTC), n=2, timezone="Europe/Paris")
    assert autumn == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]
    # ... unless the clock is already in the repeated hour's second pass
    second_pass = datetime(2026, 10, 25, 1, 10, tzinfo=UTC)  # 02:10 CET, after the first 02:30
    assert next_fire("30 2 * * *", "Europe/Paris", second_pass) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)


def test_croniter_extras_are_read() -> None:
    after = datetime(2026, 1, 1, tzinfo=UTC)
    last_days = fires("0 9 L * *", after, n=3)
    assert [t.date().isoformat() for t in last_days] == ["2026-01-31", "2026-02-28", "2026-03-31"]
    second_fridays = fires("0 9 * * fri#2", after, n=2)
    assert [t.date().isoformat() for t in second_fridays] == ["2026-01-09", "2026-02-13"]
    assert fires("0 9 ? * mon", after, n=2) == fires("0 9 * * mon", after, n=2)
