"""Times given by people: a duration (`30d`, `12h`, `1w2d`) or an instant (`24h` ago, `now`, ISO 8601).

Shared by the `tokens` and `usage` commands and the admin API. Pure (no project imports, so the
store can use it too); ValueError on bad input; every datetime returned is aware UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Final

_DURATION: Final = re.compile(r"(\d+)\s*([smhdw])")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `1w2d`, `90m`, `45s`: a positive duration."""
    compact = text.strip().lower() if isinstance(text, str) else ""
    if not compact or _DURATION.sub("", compact).strip():
        raise ValueError(f"not a duration like 30d, 12h or 1w2d: {text!r}")
    total = timedelta()
    for amount, unit in _DURATION.findall(compact):
        total += timedelta(**{_UNITS[unit]: int(amount)})
    if total <= timedelta():
        raise ValueError("duration must be positive")
    return total


def as_utc(value: datetime) -> datetime:
    """Aware UTC; a naive value is taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_datetime(value: datetime | date | str | None) -> datetime | None:
    """ISO 8601 (a trailing Z is fine), a datetime or a date (midnight); naive values are taken as UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, date):  # YAML turns `2030-01-01` into a date
        return datetime.combine(value, time(), tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except (AttributeError, ValueError) as exc:
        raise ValueError(f"not an ISO 8601 date-time: {value!r}") from exc
    return as_utc(parsed)


def parse_instant(value: str | datetime | None, *, now: datetime, default: datetime | None = None) -> datetime | None:
    """A point in time: a duration before `now` (`24h`, `7d`), `now`, or ISO 8601 (a date or a
    date-time; naive = UTC). None or an empty string give `default`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, datetime):
        return as_utc(value)
    text = value.strip()
    if text.lower() == "now":
        return as_utc(now)
    if text[-1].lower() in _UNITS:  # ISO 8601 never ends in one of these letters
        return as_utc(now) - parse_duration(text)
    try:
        return parse_datetime(text)
    except ValueError:
        raise ValueError(f"not a time like 24h (ago), now or ISO 8601: {value!r}") from None
