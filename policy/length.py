"""Output-length predictor: how many decoder steps a request will take, learned online.

Decoding time is steps x per-step cost, so the router's main unknown about a request is its
output length. For seq2seq tasks it grows about linearly with the input (a translation, a
verbalization), with a slope that depends on the target language ("21" is "twenty-one" but
"einundzwanzig"). So the predictor is a least-squares line ``steps ~ a + b * src_len`` per target
language, updated from every finished request:

    model = LengthModel()
    steps = predict_length(model, "fr", src_len=12, cfg=cfg.length)
    ...                                                       # the request finishes
    model = observe_length(model, "fr", src_len=12, steps=31, cfg=cfg.length)

A language with little data borrows from the pooled line of all languages, and an empty model
uses the configured prior; both are blended in as pseudo-observations, so predictions move
smoothly from prior to data. Old evidence decays (``forget``) so a drifting workload is
followed. The state is a plain value (sufficient statistics), passed in and returned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tandem.policy.config import LengthConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LineFit:
    """Decayed sufficient statistics of (x = src_len, y = steps) for a least-squares line."""

    w: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    se2: float = 0.0
    """Decayed sum of squared errors of predictions made *before* each sample was learnt."""
    ew: float = 0.0
    """Decayed count of those errors."""

    def add(self, x: float, y: float, error: float, forget: float) -> LineFit:
        return LineFit(
            self.w * forget + 1.0,
            self.sx * forget + x,
            self.sy * forget + y,
            self.sxx * forget + x * x,
            self.sxy * forget + x * y,
            self.se2 * forget + error * error,
            self.ew * forget + 1.0,
        )

    def line(self, prior: tuple[float, float], prior_weight: float) -> tuple[float, float]:
        """(intercept, slope) through the data, shrunk towards ``prior`` by a pseudo-weight.

        The prior enters as ``prior_weight`` pseudo-points on the prior line, spread like the
        data (+/- one standard deviation around its mean), so with no data the prior line comes
        back exactly and with much data the least-squares line.
        """
        a0, b0 = prior
        if self.w > 0:
            mx = self.sx / self.w
            var = self.sxx / self.w - mx * mx
        else:
            mx, var = 0.0, 0.0
        sd = max(var, 1.0) ** 0.5
        lo, hi = mx - sd, mx + sd
        w = self.w + prior_weight
        sx = self.sx + prior_weight * mx
        sy = self.sy + prior_weight * (a0 + b0 * mx)
        sxx = self.sxx + prior_weight / 2 * (lo * lo + hi * hi)
        sxy = self.sxy + prior_weight / 2 * (lo * (a0 + b0 * lo) + hi * (a0 + b0 * hi))
        mean_x, mean_y = sx / w, sy / w
        var_all = sxx / w - mean_x * mean_x
        slope = (sxy / w - mean_x * mean_y) / var_all if var_all > 1e-12 else b0
        return mean_y - slope * mean_x, slope


@dataclass(frozen=True)
class LengthModel:
    """Per-language line fits plus a pooled fit over all languages."""

    pooled: LineFit = LineFit()
    languages: tuple[tuple[str, LineFit], ...] = ()

    def fit_for(self, lang: str) -> LineFit | None:
        for name, fit in self.languages:
            if name == lang:
                return fit
        return None


@dataclass(frozen=True)
class LengthPrediction:
    """Expected decoder steps of one request and the typical size of the error."""

    tokens: float
    sd: float
    """Root-mean-square error of this language's past predictions (out of sample)."""


def observe_length(
    model: LengthModel, lang: str, src_len: int, steps: int, cfg: LengthConfig
) -> LengthModel:
    """Learn from one finished request: ``steps`` decoder steps for ``src_len`` source tokens."""
    error = steps - predict_length(model, lang, src_len, cfg).tokens
    fit = model.fit_for(lang) or LineFit()
    fit = fit.add(float(src_len), float(steps), error, cfg.forget)
    others = tuple((name, f) for name, f in model.languages if name != lang)
    languages = tuple(sorted(others + ((lang, fit),), key=lambda item: item[0]))
    pooled = model.pooled.add(float(src_len), float(steps), error, cfg.forget)
    return LengthModel(pooled, languages)


def predict_length(
    model: LengthModel, lang: str, src_len: int, cfg: LengthConfig
) -> LengthPrediction:
    """Expected decoder steps for a request in ``lang`` with ``src_len`` source tokens."""
    line = model.pooled.line((cfg.prior_intercept, cfg.prior_slope), cfg.prior_weight)
    fit = model.fit_for(lang)
    errors = model.pooled
    if fit is not None:
        # The pooled line is this language's prior: languages differ, but less than a guess.
        line = fit.line(line, cfg.prior_weight)
        if fit.ew >= cfg.prior_weight:
            errors = fit
    steps = min(max(line[0] + line[1] * src_len, cfg.min_tokens), cfg.max_tokens)
    # Until errors were seen, assume the prior is off by half its own prediction.
    prior_sd = 0.5 * steps
    sd = ((errors.se2 + cfg.prior_weight * prior_sd**2) / (errors.ew + cfg.prior_weight)) ** 0.5
    return LengthPrediction(steps, sd)
