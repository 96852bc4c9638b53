"""Workload: which requests arrive when — Poisson arrivals, lengths from the model's data.

Each request draws (target language, source tokens, decoder steps) from the default model's
own data distribution (1-4 numbers below one billion, log-uniform magnitudes, languages
uniform). That table is data, not code: ``workload.csv`` beside the model bundle it describes
(``tandem/models/verbalizer/``), package data read through ``importlib.resources``, written by
``tools/make_workload.py`` whenever the model's tokenizer changes. Arrivals are a
Poisson process at ``rate_per_s``: one user's assistant, requests triggered by hand. The
output length is part of the request here because the simulator must know how long decoding
really takes; the policy never sees it, only its own prediction.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import logging
from dataclasses import dataclass

import numpy as np

from tandem.defaults import DEFAULT_MODEL
from tandem.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

WORKLOAD_FILE = "workload.csv"
COLUMNS = ("lang", "src_len", "steps", "count")
"""The table's header; lines starting with ``#`` before it say how it was made."""

Row = tuple[str, int, int, int]
"""(target language, source tokens, decoder steps, how often the recipe drew it)."""


@functools.cache
def load_rows(model: str = DEFAULT_MODEL) -> tuple[Row, ...]:
    """The workload table shipped beside the shipped model ``model``, in file order.

    File order matters: a seed picks rows by index, so the same file gives the same workload.
    A missing or malformed table is a broken installation, named with file and line.
    """
    resource = importlib.resources.files("tandem") / "models" / model / WORKLOAD_FILE
    where = f"tandem/models/{model}/{WORKLOAD_FILE}"
    try:
        text = resource.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise BundleError(f"{where}: no workload table shipped with model {model!r}") from exc
    numbered = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    data = [(i, line) for i, line in numbered if not line.startswith("#")]
    header = next(csv.reader([data[0][1]])) if data else None
    if header is None or tuple(header) != COLUMNS:
        raise BundleError(f"{where}: header must be {','.join(COLUMNS)}, got {header}")
    rows = []
    for lineno, line in data[1:]:
        fields = next(csv.reader([line]))
        try:
            lang, src_len, steps, count = fields
            row = (lang, int(src_len), int(steps), int(count))
        except ValueError as exc:
            raise BundleError(f"{where}:{lineno}: expected lang,int,int,int, got {fields}") from exc
        if not lang or min(row[1:]) < 1:
            raise BundleError(f"{where}:{lineno}: empty language or a count below 1: {fields}")
        rows.append(row)
    if not rows:
        raise BundleError(f"{where}: no rows")
    return tuple(rows)


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
    rows: tuple[Row, ...] | None = None,
) -> Workload:
    """``n`` requests with exponential inter-arrival gaps, lengths drawn from ``rows``.

    ``rows`` defaults to the default model's shipped table (``load_rows()``).
    """
    if rows is None:
        rows = load_rows()
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
