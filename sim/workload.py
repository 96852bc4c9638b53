"""Workload: which requests arrive when — Poisson arrivals, lengths from the model's data.

Each request draws (target language, source tokens, decoder steps) from the default model's
own data distribution, tabulated in ``sim/workload_table.py`` by ``tools/make_workload.py``
(1-4 numbers below one billion, log-uniform magnitudes, languages uniform). Arrivals are a
Poisson process at ``rate_per_s``: one user's assistant, requests triggered by hand. The
output length is part of the request here because the simulator must know how long decoding
really takes; the policy never sees it, only its own prediction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tandem.errors import ConfigError
from tandem.sim.workload_table import ROWS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One request of the workload."""

    index: int
    arrival_s: float
    lang: str
    src_len: int
    steps: int
    """Decoder steps this request really takes (forced language token and ``</s>`` included)."""
    local_only: bool = False


@dataclass(frozen=True)
class Workload:
    requests: tuple[Request, ...]
    rate_per_s: float


def make_workload(
    n: int,
    rate_per_s: float,
    rng: np.random.Generator,
    local_only_share: float = 0.0,
    rows: tuple[tuple[str, int, int, int], ...] = ROWS,
) -> Workload:
    """``n`` requests with exponential inter-arrival gaps, lengths drawn from ``rows``."""
    if n < 1:
        raise ConfigError(f"--requests must be >= 1, got {n}")
    if not rate_per_s > 0:
        raise ConfigError(f"arrival rate must be > 0, got {rate_per_s}")
    if not 0 <= local_only_share <= 1:
        raise ConfigError(f"local_only share must be in [0, 1], got {local_only_share}")
    counts = np.array([r[3] for r in rows], dtype=float)
    picks = rng.choice(len(rows), size=n, p=counts / counts.sum())
    gaps = rng.exponential(1.0 / rate_per_s, size=n)
    arrivals = np.cumsum(gaps)
    private = rng.random(n) < local_only_share
    requests = tuple(
        Request(
            index=i,
            arrival_s=float(arrivals[i]),
            lang=rows[k][0],
            src_len=int(rows[k][1]),
            steps=int(rows[k][2]),
            local_only=bool(private[i]),
        )
        for i, k in enumerate(picks)
    )
    return Workload(requests, rate_per_s)
