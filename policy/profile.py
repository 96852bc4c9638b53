"""Profile: measured costs of one model bundle on one machine, as the policy reads them.

A profile is what ``tandem profile`` writes (format ``tandem-profile/1``): encoder wall time
against source length and one decoder step's wall time against batch size and position. The
policy and the simulator only ever ask three questions of it — how long does the encoder take
for ``src_len`` tokens, how long does one step take, how long do ``n`` steps take — so this
module answers exactly those, by linear interpolation between the measured points (clamped at
the ends, because extrapolating a handful of points is worse than holding the last one).

Pure on purpose: ``Profile.from_dict`` takes the mapping a caller read with
``yaml.safe_load``; reading files belongs to the caller (the CLI, the edge agent).

Slower devices are represented by ``Profile.scaled(factor)``: every time multiplied by one
device-speed factor (see docs/simulation.md for the default and its rationale).
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from tandem.config import shown
from tandem.errors import ConfigError
from tandem.policy.energy import DEFAULT_POWER_W

log = logging.getLogger(__name__)

FORMAT = "tandem-profile/1"

POWER_SOURCES = ("rapl", "default")
"""Where a profile's ``power_w`` came from: measured by RAPL, or the documented default."""

_TOP_KEYS = frozenset(
    {
        "format",
        "model",
        "host",
        "encoder_ms",
        "decoder_step_ms",
        "part_bytes",
        "peak_rss_mb",
        "request_overhead_ms",
        "race_overhead_ms",
        "power_w",
        "power_source",
    }
)


def _interp(xs: tuple[float, ...], ys: tuple[float, ...], x: float) -> float:
    """Piecewise-linear interpolation through (xs, ys), held constant beyond both ends."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1 = xs[i - 1], xs[i]
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class Profile:
    """Costs of one model bundle on one machine, in wall milliseconds at batch size 1 unless said."""

    model_name: str
    hidden_size: int
    """Width of the encoder's hidden states: sets the codec's payload size."""
    encoder_points: tuple[tuple[float, float], ...]
    """(src_len, ms): encoder plus cross-attention cache init for one source, sorted by src_len."""
    decoder_points: tuple[tuple[int, float, float], ...]
    """(batch, position, ms): one decoder step in which every sequence of the batch advances one
    token, sorted. ``position`` is the 1-based index of the generated token."""
    description: str = ""
    fingerprint: str = ""
    request_overhead_ms: float = 0.0
    """Fixed cost of one request outside the model runs: on a device, the agent's local API,
    tokenization and detokenization (every request pays it, whichever route); in a cloud
    profile, the service's gRPC handling, codec and scheduling (cloud requests pay it).
    ``tandem profile`` times model runs only and leaves it 0; a measured value comes from
    running the real daemons (``bench/sim_vs_emulation.py`` calibrates it on an ideal link)."""
    race_overhead_ms: float = 0.0
    """Device profile: how much longer the local run takes while it races the cloud (HANDOFF)
    — the upload's thread, gRPC's work and the checks of the cloud's stream share the device's
    CPU and interpreter with the decoder. About 1.5-2 ms on a 2-core host for a 20-token
    answer. Like ``request_overhead_ms`` only the real daemons show it; the fidelity bench
    calibrates it on a slow constant link, where every race is won by the local run."""
    power_w: float = DEFAULT_POWER_W
    """Active power of this machine while an inference run keeps a lane busy (see
    ``policy.energy``): device compute energy = power_w x busy time. Optional in the file."""
    _batches: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _curves: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...] = field(
        init=False, repr=False, compare=False
    )
    _encoder_curve: tuple[tuple[float, ...], tuple[float, ...]] = field(
        init=False, repr=False, compare=False
    )
    _cumulative: dict[int, list[float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.hidden_size <= 0:
            raise ConfigError(f"profile: model.hidden_size must be > 0, got {self.hidden_size}")
        for name in ("request_overhead_ms", "race_overhead_ms"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"profile: {name} must be a finite number >= 0, got {value}")
        if not (self.power_w >= 0 and math.isfinite(self.power_w)):
            raise ConfigError(f"profile: power_w must be a finite number >= 0, got {self.power_w}")
        if not self.encoder_points:
            raise ConfigError("profile: encoder_ms needs at least one point")
        if not self.decoder_points:
            raise ConfigError("profile: decoder_step_ms needs at least one point")
        enc = tuple(sorted(self.encoder_points))
        dec = tuple(sorted(self.decoder_points))
        for src_len, ms in enc:
            if not (src_len >= 0 and ms > 0 and math.isfinite(ms)):
                raise ConfigError(
                    f"profile: encoder point {(src_len, ms)} needs src_len >= 0, ms > 0"
                )
        for batch, position, ms in dec:
            if not (batch >= 1 and position >= 1 and ms > 0 and math.isfinite(ms)):
                raise ConfigError(
                    f"profile: decoder point {(batch, position, ms)} needs batch >= 1, "
                    "position >= 1, ms > 0"
                )
        if len({p[0] for p in enc}) != len(enc):
            raise ConfigError("profile: encoder_ms has two points with the same src_len")
        if len({(b, p) for b, p, _ in dec}) != len(dec):
            raise ConfigError(
                "profile: decoder_step_ms has two points with the same batch/position"
            )
        object.__setattr__(self, "encoder_points", enc)
        object.__setattr__(self, "decoder_points", dec)
        batches = tuple(sorted({b for b, _, _ in dec}))
        curves = tuple(
            (
                tuple(float(p) for bb, p, _ in dec if bb == b),
                tuple(float(ms) for bb, _, ms in dec if bb == b),
            )
            for b in batches
        )
        object.__setattr__(
            self,
            "_encoder_curve",
            (tuple(float(s) for s, _ in enc), tuple(float(ms) for _, ms in enc)),
        )
        object.__setattr__(self, "_batches", batches)
        object.__setattr__(self, "_curves", curves)
        # Memo of cumulative decode times per batch; a cache of pure results, not state.
        object.__setattr__(self, "_cumulative", {})

    # -- the three questions ------------------------------------------------------------------

    def encoder_ms(self, src_len: float) -> float:
        """Encoder + cross-attention cache init for one source of ``src_len`` tokens."""
        return _interp(*self._encoder_curve, src_len)

    def step_ms(self, batch: float, position: float) -> float:
        """One decoder step at this batch size and position (per step, not per sequence)."""
        batches = self._batches
        if batch <= batches[0]:
            return _interp(*self._curves[0], position)
        if batch >= batches[-1]:
            return _interp(*self._curves[-1], position)
        i = bisect.bisect_right(batches, batch)
        b0, b1 = batches[i - 1], batches[i]
        y0 = _interp(*self._curves[i - 1], position)
        y1 = _interp(*self._curves[i], position)
        return y0 + (y1 - y0) * (batch - b0) / (b1 - b0)

    def decode_ms(self, n_tokens: float, batch: int = 1) -> float:
        """Steps at positions 1..n_tokens at this batch size; fractional n interpolates.

        The cloud runs every sequence of a batch together, so this is also one sequence's
        decoding time on a server whose batch holds ``batch`` sequences.
        """
        if n_tokens <= 0:
            return 0.0
        cum = self._cumulative.get(batch)
        if cum is None:
            last = max(max(p) for p, _ in self._curves)
            top = int(last) + 1
            cum = [0.0]
            for position in range(1, top + 1):
                cum.append(cum[-1] + self.step_ms(batch, position))
            self._cumulative[batch] = cum
        top = len(cum) - 1
        if n_tokens >= top:
            return cum[top] + (n_tokens - top) * self.step_ms(batch, top)
        lo = int(n_tokens)
        frac = n_tokens - lo
        return cum[lo] + frac * (cum[lo + 1] - cum[lo]) if frac else cum[lo]

    @property
    def max_batch(self) -> int:
        return self._batches[-1]

    # -- construction ------------------------------------------------------------------------

    def scaled(self, factor: float) -> Profile:
        """The same profile on a machine ``factor`` times slower (factor > 1) or faster (< 1)."""
        if not (factor > 0 and math.isfinite(factor)):
            raise ConfigError(f"device-speed factor must be > 0, got {factor}")
        return Profile(
            model_name=self.model_name,
            hidden_size=self.hidden_size,
            encoder_points=tuple((s, ms * factor) for s, ms in self.encoder_points),
            decoder_points=tuple((b, p, ms * factor) for b, p, ms in self.decoder_points),
            description=f"{self.description} (scaled x{factor:g})".strip(),
            fingerprint=self.fingerprint,
            request_overhead_ms=self.request_overhead_ms * factor,
            race_overhead_ms=self.race_overhead_ms * factor,
            power_w=self.power_w,
        )

    @classmethod
    def from_dict(cls, data: Any, where: str = "profile") -> Profile:
        """Build from the mapping of a ``tandem-profile/1`` YAML file; ``where`` names it in errors."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown keys {shown(sorted(map(str, unknown)))}")
        if data.get("power_source", "default") not in POWER_SOURCES:
            raise ConfigError(
                f"{where}: power_source must be one of {', '.join(POWER_SOURCES)}, "
                f"got {shown(data.get('power_source'))}"
            )
        if data.get("format") != FORMAT:
            raise ConfigError(
                f"{where}: format must be {FORMAT!r}, got {shown(data.get('format'))}"
            )
        model = data.get("model")
        if not isinstance(model, dict):
            raise ConfigError(f"{where}: model must be a mapping")
        try:
            hidden_size = int(model["hidden_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: model.hidden_size must be an integer") from exc
        host = data.get("host") or {}
        if not isinstance(host, dict):
            raise ConfigError(f"{where}: host must be a mapping")
        encoder = _points(data.get("encoder_ms"), ("src_len", "ms"), f"{where}: encoder_ms")
        decoder = _points(
            data.get("decoder_step_ms"), ("batch", "position", "ms"), f"{where}: decoder_step_ms"
        )
        try:
            return cls(
                model_name=str(model.get("name", "")),
                hidden_size=hidden_size,
                encoder_points=tuple((float(s), float(ms)) for s, ms in encoder),
                decoder_points=tuple((int(b), float(p), float(ms)) for b, p, ms in decoder),
                description=str(host.get("description", "")),
                fingerprint=str(model.get("fingerprint", "")),
                request_overhead_ms=_number(
                    data.get("request_overhead_ms", 0.0), f"{where}: request_overhead_ms"
                ),
                race_overhead_ms=_number(
                    data.get("race_overhead_ms", 0.0), f"{where}: race_overhead_ms"
                ),
                power_w=_number(data.get("power_w", DEFAULT_POWER_W), f"{where}: power_w"),
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {str(exc).removeprefix('profile: ')}") from None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {shown(value)}")
    return float(value)


def _points(rows: Any, keys: tuple[str, ...], where: str) -> list[tuple[float, ...]]:
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{where} must be a non-empty list of mappings")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != set(keys):
            raise ConfigError(
                f"{where}[{i}] must have exactly the keys {list(keys)}, got {shown(row)}"
            )
        try:
            out.append(tuple(float(row[k]) for k in keys))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}[{i}]: values must be numbers, got {shown(row)}") from exc
    return out
