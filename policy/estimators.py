"""Network estimators: samples of the past in, estimates for the next decision out.

The caller (the edge agent's probes, or the simulator) owns one ``NetworkState`` value and
feeds it what it measured — round-trip times, finished uploads, times to first token, and
whether each cloud call or probe succeeded::

    state = NetworkState()
    state = observe_rtt(state, now_s, rtt_ms, cfg)
    state = observe_upload(state, now_s, nbytes, seconds, cfg)
    state = observe_ttft(state, now_s, ttft_ms, cfg)
    state = observe_outcome(state, now_s, ok, cfg)
    state = observe_probe_sent(state, now_s)            # a probe (ping) leaves ...
    state = observe_probe_result(state, now_s, rtt_ms, cfg)   # ... and returns (None: lost)
    est = estimate(state, now_s, cfg)      # -> NetworkEstimate, fields go into Observations

Every function returns a new state and never reads a clock: ``now_s`` is whatever monotonic
time the caller uses, so the simulator replays the same code on trace time.

How each signal is summarised, and why:

- **RTT** (fed by probes every couple of seconds): typical = windowed median, pessimistic =
  max(windowed high quantile, EWMA). A quantile is robust — one freak sample cannot move it —
  but needs several samples to notice a change; the EWMA notices it after one or two; taking
  the worse of the two prices a rise in at once while one lucky sample changes nothing.
- **Uplink throughput** (fed by the caller's own uploads, so it is sparse, and stops entirely
  when the policy stops uploading): log-domain, because throughput varies by ratios. Samples
  are weighted by age (half-life ``halflife_s``) together with a prior pseudo-sample, so stale
  evidence fades into the prior instead of being trusted forever; the *current level* is an
  EWMA that drops at once on a slow (or stalled, see ``finished=False``) upload and reverts
  to the weighted median within a few ``revert_s``; the *pessimistic level* is the current
  one scaled by the link's own spread (median / ``low_quantile``).
- **Failures**: an EWMA of call/probe outcomes (the loss rate the cost model prices), a count
  of consecutive failures, and an outstanding probe that is overdue — either declares an
  outage, which the policy answers with LOCAL until a probe comes back.
- **Time to first token**: windowed median, for logs and as a check on the cost model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

from tandem.policy.config import EstimatorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleWindow:
    """The last ``max_samples`` samples of one signal with their times, and an EWMA of it."""

    times: tuple[float, ...] = ()
    values: tuple[float, ...] = ()
    ewma: float | None = None
    """EWMA of the samples (of their logarithm when the window was fed with ``log_domain``)."""
    ewma_t_s: float | None = None
    """Time of the last sample that moved the EWMA."""

    def push(
        self,
        t_s: float,
        value: float,
        cfg: EstimatorConfig,
        log_domain: bool = False,
        windowed: bool = True,
    ) -> SampleWindow:
        """Add a sample; ``windowed=False`` feeds only the EWMA (a censored bound, not a value)."""
        x = math.log(max(value, 1e-9)) if log_domain else value
        if log_domain and len(self.values) >= 3:
            # Robust upwards, quick downwards: one lucky sample cannot lift the level above
            # what the window already knows, while a drop moves it at once.
            x = min(x, math.log(max(quantile(list(self.values), cfg.high_quantile), 1e-9)))
        ewma = x if self.ewma is None else self.ewma + cfg.ewma_alpha * (x - self.ewma)
        if not windowed:
            return SampleWindow(self.times, self.values, ewma, t_s)
        keep = cfg.max_samples - 1
        times = self.times[-keep:] if keep else ()
        values = self.values[-keep:] if keep else ()
        return SampleWindow(times + (t_s,), values + (value,), ewma, t_s)

    def recent(self, now_s: float, cfg: EstimatorConfig) -> list[float]:
        """Values of samples at most ``window_s`` old, oldest first."""
        horizon = now_s - cfg.window_s
        return [v for t, v in zip(self.times, self.values, strict=True) if t >= horizon]

    def ewma_value(self, log_domain: bool = False) -> float | None:
        if self.ewma is None:
            return None
        return math.exp(self.ewma) if log_domain else self.ewma


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method) of a non-empty list."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class NetworkState:
    """Everything the estimators remember; an explicit value, passed in and returned."""

    rtt_ms: SampleWindow = SampleWindow()
    uplink_bps: SampleWindow = SampleWindow()
    ttft_ms: SampleWindow = SampleWindow()
    loss_rate: float = 0.0
    consecutive_failures: int = 0
    last_success_s: float | None = None
    last_failure_s: float | None = None
    probe_sent_s: float | None = None
    """When the probe still awaiting its answer was sent (None: none outstanding)."""


@dataclass(frozen=True)
class NetworkEstimate:
    """What the estimators believe now; ``None`` where no fresh sample exists."""

    rtt_ms: float | None
    rtt_high_ms: float | None
    uplink_bps: float
    """Current uplink level (the prior before any upload)."""
    uplink_low_bps: float
    ttft_ms: float | None
    """Typical (median) observed time to first token: for logs and metrics, and a check on
    the cost model's own first-token prediction (``RouteCosts.ttft_ms``)."""
    loss_rate: float
    outage: bool
    """The last ``outage_failures`` calls/probes all failed and none succeeded since, or the
    outstanding probe is overdue (see ``EstimatorConfig.overdue_factor``)."""
    uplink_typical_bps: float | None = None
    """The weighted median of finished uploads and the prior, without the current level's
    EWMA: what an upload usually gets here (None only from callers that do not fill it)."""


def observe_rtt(
    state: NetworkState, t_s: float, rtt_ms: float, cfg: EstimatorConfig
) -> NetworkState:
    """A measured round trip (a probe's ping, or a call's handshake)."""
    return replace(state, rtt_ms=state.rtt_ms.push(t_s, rtt_ms, cfg))


def observe_upload(
    state: NetworkState,
    t_s: float,
    nbytes: float,
    seconds: float,
    cfg: EstimatorConfig,
    finished: bool = True,
) -> NetworkState:
    """An upload of ``nbytes`` that occupied the uplink for ``seconds``.

    ``seconds`` should exclude propagation (the agent subtracts half an RTT, or uses the
    server's receive timestamp). ``finished=False`` reports an upload still under way when the
    caller gave up waiting (hedge or deadline): ``nbytes`` acknowledged so far in ``seconds``.
    That is only an upper bound on the throughput, so it moves the EWMA (a drop is noticed at
    once) but not the window's quantiles (which describe completed uploads).
    """
    if seconds <= 0:
        return state
    bps = max(nbytes, 1.0) * 8.0 / seconds
    window = state.uplink_bps.push(t_s, bps, cfg, log_domain=True, windowed=finished)
    return replace(state, uplink_bps=window)


def observe_ttft(
    state: NetworkState, t_s: float, ttft_ms: float, cfg: EstimatorConfig
) -> NetworkState:
    """Time from sending a request to its first streamed token."""
    return replace(state, ttft_ms=state.ttft_ms.push(t_s, ttft_ms, cfg))


def observe_outcome(
    state: NetworkState, t_s: float, ok: bool, cfg: EstimatorConfig
) -> NetworkState:
    """A cloud call or probe finished (``ok``) or failed/timed out (not ``ok``)."""
    loss = state.loss_rate + cfg.loss_alpha * ((0.0 if ok else 1.0) - state.loss_rate)
    if ok:
        return replace(state, loss_rate=loss, consecutive_failures=0, last_success_s=t_s)
    return replace(
        state,
        loss_rate=loss,
        consecutive_failures=state.consecutive_failures + 1,
        last_failure_s=t_s,
    )


def observe_probe_sent(state: NetworkState, t_s: float) -> NetworkState:
    """A probe left at ``t_s``. While its answer is overdue the link counts as down."""
    if state.probe_sent_s is not None:
        return state  # the older outstanding probe is the one that says most
    return replace(state, probe_sent_s=t_s)


def observe_probe_result(
    state: NetworkState, t_s: float, rtt_ms: float | None, cfg: EstimatorConfig
) -> NetworkState:
    """The outstanding probe came back after ``rtt_ms``, or failed/timed out (``None``)."""
    state = replace(state, probe_sent_s=None)
    if rtt_ms is None:
        return observe_outcome(state, t_s, False, cfg)
    return observe_outcome(observe_rtt(state, t_s, rtt_ms, cfg), t_s, True, cfg)


def estimate(state: NetworkState, now_s: float, cfg: EstimatorConfig) -> NetworkEstimate:
    """Typical and pessimistic values from fresh samples (see the module docstring)."""
    rtt, rtt_high = _typical_and_high(state.rtt_ms, now_s, cfg)
    ttft = _typical_and_high(state.ttft_ms, now_s, cfg)[0]
    uplink, uplink_low, typical = _throughput(state.uplink_bps, now_s, cfg)
    overdue = False
    if state.probe_sent_s is not None:
        expected_ms = rtt_high if rtt_high is not None else 0.0
        limit_ms = max(cfg.overdue_min_ms, cfg.overdue_factor * expected_ms)
        overdue = (now_s - state.probe_sent_s) * 1000.0 > limit_ms
    return NetworkEstimate(
        rtt_ms=rtt,
        rtt_high_ms=rtt_high,
        uplink_bps=uplink,
        uplink_low_bps=uplink_low,
        ttft_ms=ttft,
        loss_rate=state.loss_rate,
        outage=overdue or state.consecutive_failures >= cfg.outage_failures,
        uplink_typical_bps=typical,
    )


def _throughput(
    window: SampleWindow, now_s: float, cfg: EstimatorConfig
) -> tuple[float, float, float]:
    """(current level, pessimistic level, typical level) of throughput in bits/s.

    Quantiles are taken over the logarithms of the window's samples, each weighted by its age
    (half-life ``halflife_s``), plus the prior as ``prior_weight`` samples: with fresh uploads
    the data decide, with none the prior does, and in between the estimate moves smoothly.
    The current level is the log-domain EWMA, reverting towards that median as the last sample
    ages (time constant ``revert_s``): one slow upload pulls it down at once, but it does not
    stay down once the evidence is old. The pessimistic level is the current one scaled by how
    far this link's low quantile usually lies below its median.
    """
    if not window.times and window.ewma is None:
        return cfg.prior_uplink_bps, cfg.prior_uplink_bps, cfg.prior_uplink_bps
    prior = math.log(cfg.prior_uplink_bps)
    logs = [prior]
    weights = [cfg.prior_weight]
    horizon = now_s - cfg.window_s
    for t, v in zip(window.times, window.values, strict=True):
        if t >= horizon:
            logs.append(math.log(max(v, 1e-9)))
            weights.append(0.5 ** (max(0.0, now_s - t) / cfg.halflife_s))
    median = weighted_quantile(logs, weights, 0.5)
    spread = median - weighted_quantile(logs, weights, cfg.low_quantile)
    level = median
    if window.ewma is not None and window.ewma_t_s is not None:
        age = max(0.0, now_s - window.ewma_t_s)
        level = median + (window.ewma - median) * math.exp(-age / cfg.revert_s)
    return math.exp(level), math.exp(level - spread), math.exp(median)


def weighted_quantile(values: list[float], weights: list[float], q: float) -> float:
    """Quantile of a weighted sample: the value where the cumulative weight crosses q, with
    linear interpolation between the midpoints of neighbouring weights."""
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(w for _, w in pairs)
    target = q * total
    cum = 0.0
    prev_mid, prev_v = None, pairs[0][0]
    for v, w in pairs:
        mid = cum + w / 2
        if mid >= target:
            if prev_mid is None or mid == prev_mid:
                return v
            return prev_v + (v - prev_v) * (target - prev_mid) / (mid - prev_mid)
        prev_mid, prev_v = mid, v
        cum += w
    return pairs[-1][0]


def _typical_and_high(
    window: SampleWindow, now_s: float, cfg: EstimatorConfig
) -> tuple[float | None, float | None]:
    values = window.recent(now_s, cfg)
    if not values:
        return None, None
    high = quantile(values, cfg.high_quantile)
    ewma = window.ewma_value()
    return quantile(values, 0.5), max(high, ewma) if ewma is not None else high
