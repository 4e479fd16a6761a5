"""Link schedules: an interval (1 minute to 24 hours) or a cron expression."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter

_INTERVAL = re.compile(r"^\s*(\d+)\s*(m|min|h|s)\s*$")
_UNIT = {"s": 1, "m": 60, "min": 60, "h": 3600}
MIN_INTERVAL = 60
MAX_INTERVAL = 24 * 3600


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a link runs next; ``interval`` seconds or a ``cron`` expression."""

    text: str
    interval: int | None = None
    cron: str | None = None

    def next_after(self, when: datetime) -> datetime:
        """The first run time strictly after ``when`` (naive UTC in, naive UTC out)."""
        if self.interval is not None:
            return when + timedelta(seconds=self.interval)
        return croniter(self.cron, when).get_next(datetime)


_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|min|h|d)\s*$")
_DUR_UNIT = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in ``30s``, ``15m``, ``24h``, ``7d``; ValueError says what was expected."""
    m = _DURATION.match(text)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"expected a duration such as 1h, 24h or 7d, got {text!r}")
    return int(m.group(1)) * _DUR_UNIT[m.group(2)]


def parse_schedule(text: str) -> Schedule:
    """Parse ``15m``/``2h`` or a 5-field cron expression; ValueError says what was expected."""
    m = _INTERVAL.match(text)
    if m:
        seconds = int(m.group(1)) * _UNIT[m.group(2)]
        if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
            raise ValueError(
                f"expected an interval from 1m to 24h, got {text!r}"
            )
        return Schedule(text, interval=seconds)
    if len(text.split()) == 5 and croniter.is_valid(text):
        return Schedule(text, cron=text)
    raise ValueError(
        f"expected an interval such as 15m or 2h (1m to 24h) or a cron expression such as "
        f"'0 * * * *', got {text!r}"
    )
