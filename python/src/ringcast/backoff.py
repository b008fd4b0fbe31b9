"""Reconnection delays: exponential backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator, Optional


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a client reconnects after it loses its connection.

    Attempt *n* (from 1) waits ``min(initial_delay * multiplier**(n-1),
    max_delay)``, less a random share of up to ``jitter`` (0 to 1) of it, so
    that many clients cut at once by a server restart do not all come back
    in the same instant. ``max_attempts=None`` retries for ever.
    """

    initial_delay: float = 0.1
    max_delay: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: Optional[int] = None

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before attempt ``attempt`` (1-based)."""
        try:
            base = min(self.initial_delay * self.multiplier ** (attempt - 1), self.max_delay)
        except OverflowError:  # a very late attempt of a policy with no cap on attempts
            base = self.max_delay
        return base * (1.0 - self.jitter * rand())

    def delays(self, rand: Callable[[], float] = random.random) -> Iterator[float]:
        """The delay before each attempt, as many as ``max_attempts`` allows."""
        attempt = 1
        while self.max_attempts is None or attempt <= self.max_attempts:
            yield self.delay(attempt, rand)
            attempt += 1
