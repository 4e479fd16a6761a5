"""Retry policy as data: the queue table, not the process, remembers attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial: float = 2.0
    coefficient: float = 2.0
    cap: float = 600.0
    max_attempts: int = 5
    jitter: bool = True

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (attempt counts from 1).

        Full jitter: uniformly in (0, backoff], so many failing records do not
        come back in lock-step.
        """
        base = min(self.cap, self.initial * self.coefficient ** max(0, attempt - 1))
        if not self.jitter:
            return base
        return (rng or random).uniform(base / 10, base)
