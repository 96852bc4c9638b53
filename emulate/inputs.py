"""Inputs: real texts for the simulator's workload, so the emulator sends what the simulator priced.

The simulator's workload (``tandem.sim.workload``) draws each request as (language, source
tokens, decoder steps) from the default model's data distribution; the emulator must send real
text through the real agent. ``match_inputs`` samples texts from the same recipe (1-4 integers,
log-uniform magnitudes: ``sample_inputs``, which the demo and the chaos scenario use too), measures each with the real model —
source tokens by tokenizing, decoder steps by a local greedy decode — and gives every request
a text with exactly its (language, source tokens, decoder steps), or the nearest one found
within the sampling budget (counted in ``InputMatch.inexact``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tandem.runtime.seq2seq import Seq2Seq
from tandem.sim.workload import Request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputMatch:
    texts: tuple[str, ...]
    """One text per request, in request order."""
    steps: tuple[int, ...]
    """Decoder steps each text really takes on this model (EOS included)."""
    inexact: int
    """Requests whose text differs from the workload's (language, tokens, steps)."""


def sample_inputs(n: int, languages: list[str], seed: int = 0) -> list[tuple[str, str | None]]:
    """Inputs in the default model's domain: 1–4 integers, log-uniform magnitudes."""
    rng = np.random.default_rng(seed)
    inputs = []
    for i in range(n):
        count = int(rng.integers(1, 5))
        numbers = [int(10 ** rng.uniform(0, 9)) for _ in range(count)]
        target = languages[i % len(languages)] if languages else None
        inputs.append((" ".join(str(x) for x in numbers), target))
    return inputs


def measure(model: Seq2Seq, text: str, lang: str) -> tuple[int, int]:
    """(source tokens, decoder steps) of ``text`` into ``lang`` on ``model``."""
    src_len = len(model.tokenize(text))
    gen = model.generate(text, target=lang)
    return src_len, len(gen.ids) + (gen.finish == "eos")


def match_inputs(
    model: Seq2Seq, requests: tuple[Request, ...], seed: int = 0, budget: int = 3000
) -> InputMatch:
    """A text per request matching its (lang, src_len, steps); see the module docstring."""
    wanted: dict[tuple[str, int, int], None] = {
        (r.lang, r.src_len, r.steps): None for r in requests
    }
    found: dict[tuple[str, int, int], str] = {}
    pool: list[tuple[str, int, int, str]] = []  # (lang, src_len, steps, text) of every sample
    needed: dict[tuple[str, int], set[int]] = {}
    for lang, n, steps in wanted:
        needed.setdefault((lang, n), set()).add(steps)
    languages = sorted({r.lang for r in requests})
    batch = 200
    tried = 0
    while len(found) < len(wanted) and tried < budget:
        for text, _ in sample_inputs(batch, [], seed=seed * 100_003 + tried):
            tried += 1
            src_len = len(model.tokenize(text))
            for lang in languages:
                if not needed.get((lang, src_len)):
                    continue  # nothing left to find at this length: skip the decode
                _, steps = measure(model, text, lang)
                pool.append((lang, src_len, steps, text))
                if steps in needed[(lang, src_len)]:
                    needed[(lang, src_len)].discard(steps)
                    found[(lang, src_len, steps)] = text
    texts, steps, inexact = [], [], 0
    for r in requests:
        key = (r.lang, r.src_len, r.steps)
        if key in found:
            texts.append(found[key])
            steps.append(r.steps)
            continue
        inexact += 1
        if not pool:  # nothing of this length at all: measure a fresh sample
            text = sample_inputs(1, [], seed=seed + r.index)[0][0]
            texts.append(text)
            steps.append(measure(model, text, r.lang)[1])
            continue
        best = min(
            pool,
            key=lambda p: (p[0] != r.lang, abs(p[1] - r.src_len) + abs(p[2] - r.steps)),
        )
        texts.append(best[3])
        steps.append(best[2])
    log.info("inputs matched", extra={"tried": tried, "inexact": inexact})
    return InputMatch(tuple(texts), tuple(steps), inexact)


__all__ = ["InputMatch", "match_inputs", "measure"]
