"""Time and duration text: what users type (``5m``, ``now-1h``, ISO 8601) to numbers and back.

Its own module because the CLI, the config, the playground and the NAB harness all read
times the same way; before, the playground imported them from the CLI.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from openanomaly.errors import UsageError

__all__ = [
    "DURATION_MAX_CHARS",
    "DURATION_PATTERN",
    "format_duration",
    "format_iso",
    "parse_duration",
    "parse_time",
]

_DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION_NUMBER = r"\d{1,6}(?:\.\d+)?"
_DURATION_PART = re.compile(rf"({_DURATION_NUMBER})(ms|s|m|h|d|w|y)")
DURATION_MAX_CHARS = 16
"""With numbers of at most six digits, 16 characters can never overflow a ``timedelta``, so
every text the API schema allows parses, and the schema refuses exactly what the parser does."""
DURATION_PATTERN = rf"^\s*({_DURATION_NUMBER}(ms|s|m|h|d|w|y))+\s*$"
"""What :func:`parse_duration` reads, as the API schema states it (not ISO 8601's ``PT5M``)."""
_RELATIVE = re.compile(r"^now(?:\s*-\s*(\S+))?$")


def parse_duration(value: Any) -> timedelta:
    """Parse a Prometheus-style duration (``30s``, ``5m``, ``1h30m``, ``7d``) or seconds.

    Raises:
        ValueError: for anything else, quoting the value (pydantic turns it into a field error).
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return _seconds(value, value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: expected a string such as '5m' or '1h30m'")
    if len(value) > DURATION_MAX_CHARS:
        raise ValueError(f"invalid duration {value!r}: at most {DURATION_MAX_CHARS} characters, e.g. '1h30m'")
    text = value.strip()
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(
            f"invalid duration {value!r}: use a number (at most 6 digits) and a unit "
            "(ms, s, m, h, d, w, y), e.g. '5m', '1h30m'"
        )
    return _seconds(total, value)


def _seconds(seconds: float, value: Any) -> timedelta:
    """``timedelta(seconds=...)``, or the ValueError a user can read when it does not fit."""
    if seconds != seconds:  # NaN
        raise ValueError(f"invalid duration {value!r}")
    try:
        return timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        raise ValueError(f"invalid duration {value!r}: too long (at most about 2.7 million years)") from None


def format_duration(value: timedelta) -> str:
    """The shortest Prometheus duration string for ``value`` (whole milliseconds)."""
    remaining = round(value.total_seconds() * 1000)
    if remaining == 0:
        return "0s"
    parts = []
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1), ("ms", 0.001)):
        size = round(seconds * 1000)
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_time(text: str, *, now: datetime | None = None) -> int:
    """Milliseconds since the epoch from ISO 8601, unix seconds, ``now`` or ``now-<duration>``.

    Naive ISO timestamps are taken as UTC.

    Raises:
        UsageError: quoting the text.
    """
    value = text.strip()
    match = _RELATIVE.match(value)
    if match:
        base = now or datetime.now(UTC)
        try:
            offset = parse_duration(match.group(1)) if match.group(1) else None
            moment = base - offset if offset else base
        except (ValueError, OverflowError) as error:
            raise UsageError(f"invalid time {text!r}: {error}") from None
        return int(moment.timestamp() * 1000)
    try:
        return round(float(value) * 1000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"invalid time {text!r}: use ISO 8601 (2024-05-01T12:00:00Z), unix seconds, or now-<duration>"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def format_iso(ms: int, *, sep: str = "T") -> str:
    """Epoch milliseconds as a UTC ISO 8601 string to the second (``2024-05-01T12:00:00Z``).

    ``sep=" "`` reads better in tables.
    """
    return datetime.fromtimestamp(ms / 1000, UTC).strftime(f"%Y-%m-%d{sep}%H:%M:%SZ")
