"""Speech workload: one request per audio window — a fixed, large upload and a short output.

Next to the text workload (``sim/workload.py``), this is what a Whisper-family model asks of
the link and the device, as the edge agent routes it (docs/speech.md): every window is a
request of its own whose source length is the encoder's output rows (``ROWS_PER_S`` a second
of window, 1500 for 30 s) and whose hidden size is the model's ``d_model``, so an upload
weighs ``rows × d_model × codec bytes`` — 2.3 MB for whisper-tiny's window in fp32, against a
few kilobytes for a text request — while the decoder produces a few dozen tokens. Tokens per
window are drawn from a Poisson law around ``tokens_per_window``; every request also steps
through Whisper's forced prompt and its EOS. Arrivals are the text workload's Poisson process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tandem.errors import ConfigError
from tandem.policy import Profile
from tandem.sim.workload import Request, Workload

ROWS_PER_S = 50
"""Encoder output rows per second of window: Whisper's 100 log-mel frames a second, halved by
its convolutional stem."""
PROMPT_TOKENS = 3
"""Forced tokens after the start of transcript: language, task, no-timestamps."""


@dataclass(frozen=True)
class SpeechWorkload:
    """The shape of a speech workload (``tandem sim run --workload speech``)."""

    window_s: float = 30.0
    """Seconds of audio per window: Whisper's 30 s."""
    tokens_per_window: float = 40.0
    """Mean transcript tokens of one window (about 2.5 words a second of speech, ~1.3 tokens a
    word, over 30 s would be ~100; 40 is a window with pauses)."""
    hidden_size: int = 384
    """The model's ``d_model`` (whisper-tiny 384, base 512, small 768): the upload's width."""
    max_target_length: int = 448
    """The decoder's longest sequence: a window's steps are capped below it."""
    language: str = "en"

    def __post_init__(self) -> None:
        if not 0 < self.window_s <= 30.0:
            raise ConfigError(f"--window-s must be in (0, 30], got {self.window_s}")
        if not self.tokens_per_window >= 0:
            raise ConfigError(f"--tokens-per-window must be >= 0, got {self.tokens_per_window}")
        if self.hidden_size < 1:
            raise ConfigError(f"--hidden-size must be >= 1, got {self.hidden_size}")
        if self.max_target_length <= PROMPT_TOKENS + 2:
            raise ConfigError(f"max_target_length must exceed {PROMPT_TOKENS + 2}")

    @property
    def src_len(self) -> int:
        """Encoder output rows of one window: what the policy prices the upload by."""
        return max(1, round(self.window_s * ROWS_PER_S))

    def profile(self, profile: Profile) -> Profile:
        """``profile`` with the speech model's width, so uploads are priced at its size."""
        return dataclasses.replace(profile, hidden_size=self.hidden_size)

    def maker(self) -> Callable[..., Workload]:
        """A ``make_workload``-shaped function drawing this workload (for ``make_draws``)."""
        return lambda n, rate_per_s, rng, local_only_share=0.0: make_speech_workload(
            n, rate_per_s, rng, self, local_only_share
        )


def make_speech_workload(
    n: int,
    rate_per_s: float,
    rng: np.random.Generator,
    speech: SpeechWorkload,
    local_only_share: float = 0.0,
) -> Workload:
    """``n`` windows with exponential inter-arrival gaps and Poisson transcript lengths."""
    if n < 1:
        raise ConfigError(f"--requests must be >= 1, got {n}")
    if not rate_per_s > 0:
        raise ConfigError(f"arrival rate must be > 0, got {rate_per_s}")
    if not 0 <= local_only_share <= 1:
        raise ConfigError(f"local_only share must be in [0, 1], got {local_only_share}")
    tokens = rng.poisson(speech.tokens_per_window, size=n)
    gaps = rng.exponential(1.0 / rate_per_s, size=n)
    arrivals = np.cumsum(gaps)
    private = rng.random(n) < local_only_share
    most = speech.max_target_length - 1  # decoder steps, the start token aside
    requests = tuple(
        Request(
            index=i,
            arrival_s=float(arrivals[i]),
            lang=speech.language,
            src_len=speech.src_len,
            steps=int(min(PROMPT_TOKENS + tokens[i] + 1, most)),  # prompt, transcript, EOS
            local_only=bool(private[i]),
        )
        for i in range(n)
    )
    return Workload(requests, rate_per_s)
