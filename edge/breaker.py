"""Circuit breaker for the cloud: stop paying timeouts to a cloud that keeps failing.

closed ──(``failure_threshold`` failures in a row)──▶ open ──(``reset_timeout_s``)──▶ half-open
half-open: exactly one probe request goes through; success closes, failure re-opens.

Pure state machine: the caller passes ``now_s`` (monotonic seconds), so tests and the simulator
drive it without sleeping. Thread-safe, because request threads share one breaker.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 3
    """Consecutive failures that open the breaker."""
    reset_timeout_s: float = 5.0
    """How long the breaker stays open before one probe request is let through."""


class CircuitBreaker:
    def __init__(self, config: BreakerConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at_s = 0.0
        self._probe_in_flight = False
        self.transitions = 0

    def state(self, now_s: float) -> BreakerState:
        with self._lock:
            return self._current(now_s)

    def _current(self, now_s: float) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and now_s - self._opened_at_s >= self._config.reset_timeout_s
        ):
            self._set(BreakerState.HALF_OPEN)
            self._probe_in_flight = False
        return self._state

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            self.transitions += 1

    def allow(self, now_s: float) -> bool:
        """May a request go to the cloud now? In half-open, only the one probe may."""
        with self._lock:
            state = self._current(now_s)
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return True
            return False

    def record_success(self, now_s: float) -> None:
        with self._lock:
            self._failures = 0
            self._probe_in_flight = False
            self._set(BreakerState.CLOSED)

    def record_failure(self, now_s: float) -> None:
        with self._lock:
            state = self._current(now_s)
            self._failures += 1
            self._probe_in_flight = False
            if state is BreakerState.HALF_OPEN or self._failures >= self._config.failure_threshold:
                self._set(BreakerState.OPEN)
                self._opened_at_s = now_s
