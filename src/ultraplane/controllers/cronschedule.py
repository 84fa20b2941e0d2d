"""Cron schedules as the CronJob controller reads them (robfig/cron's standard parser).

Five fields (minute hour day-of-month month day-of-week) with `*`, `?`, lists, ranges, steps and
JAN-DEC / SUN-SAT names, or one of @yearly @annually @monthly @weekly @daily @midnight @hourly and
`@every <duration>`. As in robfig/cron, when both day fields are restricted a day matching either
runs; times are computed in the CronJob's spec.timeZone (UTC by default).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MONTHS = {n: i + 1 for i, n in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
DAYS = {n: i for i, n in enumerate("SUN MON TUE WED THU FRI SAT".split())}
DESCRIPTORS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
               "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
BOUNDS = [(0, 59, {}), (0, 23, {}), (1, 31, {}), (1, 12, MONTHS), (0, 6, DAYS)]
SEARCH_YEARS = 5  # robfig gives up after five years without a match (e.g. "0 0 30 2 *")


class ScheduleError(ValueError):
    pass


@dataclass(frozen=True)
class Schedule:
    minutes: frozenset[int] = frozenset()
    hours: frozenset[int] = frozenset()
    days: frozenset[int] = frozenset()
    months: frozenset[int] = frozenset()
    weekdays: frozenset[int] = frozenset()
    day_star: bool = False
    weekday_star: bool = False
    every: dt.timedelta | None = None

    def day_matches(self, when: dt.datetime) -> bool:
        dom = when.day in self.days
        dow = (when.isoweekday() % 7) in self.weekdays
        if self.day_star or self.weekday_star:
            return dom and dow
        return dom or dow

    def next(self, after: dt.datetime) -> dt.datetime | None:
        """The first activation strictly after `after`, in after's time zone."""
        if self.every is not None:
            step = max(self.every, dt.timedelta(seconds=1))
            return after.replace(microsecond=0) + step
        t = (after + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
        limit = t.year + SEARCH_YEARS
        while t.year <= limit:
            if t.month not in self.months:
                t = _first_of_next_month(t)
                continue
            if not self.day_matches(t):
                t = t.replace(hour=0, minute=0) + dt.timedelta(days=1)  # wall-clock: aware arithmetic in one zone
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0) + dt.timedelta(hours=1)
                continue
            if t.minute not in self.minutes:
                t = t + dt.timedelta(minutes=1)
                continue
            return t
        return None


def _first_of_next_month(t: dt.datetime) -> dt.datetime:
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return t.replace(year=year, month=month, day=1, hour=0, minute=0)


def _value(text: str, names: dict[str, int], low: int, high: int) -> int:
    upper = text.upper()
    if upper in names:
        return names[upper]
    if not text.isdigit():
        raise ScheduleError(f'failed to parse int from {text}: strconv.Atoi: parsing "{text}": invalid syntax')
    value = int(text)
    if value < low or value > high:
        raise ScheduleError(f"end of range ({value}) above maximum ({high}): {text}" if value > high
                            else f"beginning of range ({value}) below minimum ({low}): {text}")
    return value


def _field(text: str, index: int) -> tuple[frozenset[int], bool]:
    low, high, names = BOUNDS[index]
    out: set[int] = set()
    star = False
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"failed to parse int from {step_text}")
            step = int(step_text)
        if base in ("*", "?"):
            start, end = low, high
            star = star or not step_text
        elif "-" in base:
            a, b = base.split("-", 1)
            start, end = _value(a, names, low, high), _value(b, names, low, high)
            if start > end:
                raise ScheduleError(f"beginning of range ({start}) beyond end of range ({end}): {base}")
        else:
            start = _value(base, names, low, high)
            end = high if step_text else start
        out.update(range(start, end + 1, step))
    return frozenset(out), star


def parse(text: str) -> Schedule:
    spec = text.strip()
    if spec.startswith(("TZ=", "CRON_TZ=")):
        raise ScheduleError("CRON_TZ or TZ used in schedule is not supported, please use .spec.timeZone instead")
    if spec.startswith("@every "):
        return Schedule(every=_duration(spec[len("@every "):]))
    if spec.startswith("@"):
        if spec not in DESCRIPTORS:
            raise ScheduleError(f"unrecognized descriptor: {spec}")
        spec = DESCRIPTORS[spec]
    fields = spec.split()
    if len(fields) != 5:
        raise ScheduleError(f"expected exactly 5 fields, found {len(fields)}: {spec}")
    minutes, _ = _field(fields[0], 0)
    hours, _ = _field(fields[1], 1)
    days, day_star = _field(fields[2], 2)
    months, _ = _field(fields[3], 3)
    weekdays, weekday_star = _field(fields[4], 4)
    return Schedule(minutes, hours, days, months, weekdays, day_star, weekday_star)


def _duration(text: str) -> dt.timedelta:
    total = 0.0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    matched = re.fullmatch(r"((\d+(\.\d+)?)(h|ms|m|s))+", text)
    if not matched:
        raise ScheduleError(f'failed to parse duration @every {text}: time: invalid duration "{text}"')
    for number, _, unit in re.findall(r"(\d+(\.\d+)?)(h|ms|m|s)", text):
        total += float(number) * units[unit]
    return dt.timedelta(seconds=total)


def zone(name: str | None) -> dt.tzinfo:
    if not name:
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown time zone {name}") from exc


def most_recent(schedule: Schedule, earliest: dt.datetime, now: dt.datetime) -> tuple[dt.datetime | None, int]:
    """mostRecentScheduleTime: the latest activation in (earliest, now] and how many were missed."""
    first = schedule.next(earliest)
    if first is None or first > now:
        return None, 0
    second = schedule.next(first)
    if second is None or second > now:
        return first, 1
    if schedule.every is not None:
        step = (second - first).total_seconds()
        count = int((now - first).total_seconds() // step)
        return first + dt.timedelta(seconds=count * step), count + 1
    # jump near `now` for regular schedules instead of walking every missed minute
    period = (second - first).total_seconds()
    missed = 2
    latest = second
    if period > 0:
        skip = int((now - second).total_seconds() // period) - 1
        if skip > 0 and skip * period > 3600:
            probe = schedule.next(second + dt.timedelta(seconds=skip * period) - dt.timedelta(minutes=1))
            if probe is not None and probe <= now:
                latest, missed = probe, missed + skip
    while True:
        following = schedule.next(latest)
        if following is None or following > now:
            return latest, missed
        latest, missed = following, missed + 1
