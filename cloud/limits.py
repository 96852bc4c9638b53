"""Per-client concurrency limit: how many Decode streams one client may hold at once.

Without it one busy device could fill every batch slot and the whole queue, and every other
device would see RESOURCE_EXHAUSTED. Counting lives here, apart from the scheduler, because a
client's streams may span several model bundles (one scheduler each).
"""

from __future__ import annotations

import threading
from collections import Counter

from tandem.errors import Overloaded


class ClientLimiter:
    """Counts open streams per client key; ``acquire`` refuses the one over the limit."""

    def __init__(self, max_streams: int, retry_after_s: float) -> None:
        self._max = max_streams
        self._retry_after_s = retry_after_s
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, client: str) -> None:
        """Count one more stream of ``client`` or raise ``Overloaded``; pair with ``release``."""
        with self._lock:
            if self._open[client] >= self._max:
                raise Overloaded(
                    f"client {client} already has {self._max} streams open, the per-client "
                    "limit; wait for one to finish",
                    retry_after_s=self._retry_after_s,
                )
            self._open[client] += 1

    def release(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    def open_streams(self, client: str) -> int:
        with self._lock:
            return self._open[client]
