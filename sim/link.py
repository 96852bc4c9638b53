"""Link model: how a request, its token stream and a probe cross a traced network.

Built on ``Trace`` (capacity over time) plus what traces lack:

- **RTT**: the trace's measured RTT where it has one (held until the next measurement), else
  the scenario's base RTT; each request draws a log-normal jitter factor around it. Half the
  RTT is the one-way propagation delay, paid once each way.
- **Loss**: each packet (``mss_bytes``) of an upload is lost with probability ``loss_rate``;
  a transfer with at least one loss pays one extra RTT (fast retransmit). One uniform draw per
  transfer decides it, so runs with the same seed are identical.
- **Outages**: zero-bandwidth stretches of the trace stall transfers (``Trace``); the caller's
  deadline ends them.

A cloud call, in order: the encoded hidden states go up (serialization over the trace +
retransmit + one-way delay), wait in the cloud's queue, the cloud builds its cache and decodes,
and tokens stream down as they are made. The stream is modelled as a fluid: the link carries
token bytes from the first token on, and token ``i`` cannot arrive before it is made. The same
trace serves both directions (most shared traces are downlink recordings).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from tandem.errors import ConfigError
from tandem.sim.trace import Trace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkConfig:
    """What the traces do not record about the network."""

    base_rtt_ms: float = 60.0
    """Round trip device <-> cloud where the trace has no measurement: a typical LTE RTT."""
    rtt_jitter: float = 0.2
    """Sigma of the log-normal factor each request's RTT is multiplied by."""
    loss_rate: float = 0.005
    """Per-packet loss probability; a transfer with a loss pays one extra RTT."""
    mss_bytes: int = 1400
    probe_bytes: int = 100
    """Bytes of a probe's ping and of its pong."""

    def __post_init__(self) -> None:
        if not self.base_rtt_ms >= 0:
            raise ConfigError(f"base_rtt_ms must be >= 0, got {self.base_rtt_ms}")
        if not self.rtt_jitter >= 0:
            raise ConfigError(f"rtt_jitter must be >= 0, got {self.rtt_jitter}")
        if not 0 <= self.loss_rate < 1:
            raise ConfigError(f"loss_rate must be in [0, 1), got {self.loss_rate}")
        if self.mss_bytes < 1:
            raise ConfigError(f"mss_bytes must be >= 1, got {self.mss_bytes}")


def rtt_ms_at(trace: Trace, cfg: LinkConfig, t_s: float, jitter: float = 1.0) -> float:
    """The RTT a packet sent at ``t_s`` sees: measured or base, times this request's jitter."""
    measured = trace.measured_rtt_at(t_s)
    return (measured if measured is not None else cfg.base_rtt_ms) * jitter


def loses_packet(nbytes: float, cfg: LinkConfig, uniform: float) -> bool:
    """Whether a transfer of ``nbytes`` loses at least one packet, given one U(0,1) draw."""
    packets = max(1, math.ceil(nbytes / cfg.mss_bytes))
    return uniform < 1.0 - (1.0 - cfg.loss_rate) ** packets


@dataclass(frozen=True)
class CallTimeline:
    """When each part of one cloud call happens, in trace seconds (inf: never)."""

    start_s: float
    upload_end_s: float
    """Last byte of the request through the link (retransmit included)."""
    decode_start_s: float
    """Cloud begins decoding (after propagation, queue and cache init)."""
    step_s: float
    """Mean cloud time per token for this request."""
    n_tokens: int
    owd_s: float
    token_bytes: int
    first_token_s: float
    """First token arrives at the device."""
    last_token_s: float
    """Last token arrives at the device: the call's completion."""

    def tokens_by(self, trace: Trace, t_s: float) -> int:
        """Tokens that have arrived at the device by ``t_s`` (for a resume after a cut)."""
        if t_s < self.first_token_s:
            return 0
        if t_s >= self.last_token_s:
            return self.n_tokens
        sent_by = t_s - self.owd_s
        made = (
            int((sent_by - self.decode_start_s) / self.step_s) if self.step_s > 0 else self.n_tokens
        )
        first_made = self.decode_start_s + self.step_s
        carried = self.n_tokens
        if self.token_bytes > 0:
            carried = int(trace.bytes_between(first_made, sent_by) // self.token_bytes)
        return max(0, min(self.n_tokens, made, carried))

    def bytes_up_by(self, trace: Trace, t_s: float, payload_bytes: int) -> float:
        """Request bytes through the link by ``t_s`` (all of them once the upload ended)."""
        if t_s >= self.upload_end_s:
            return float(payload_bytes)
        return min(float(payload_bytes), trace.bytes_between(self.start_s, t_s))


def cloud_call(
    trace: Trace,
    cfg: LinkConfig,
    start_s: float,
    payload_bytes: int,
    n_tokens: int,
    rtt_ms: float,
    lost: bool,
    cloud_wait_ms: float,
    cloud_decode_ms: float,
    token_bytes: int,
) -> CallTimeline:
    """Timeline of one cloud call started at ``start_s``.

    ``cloud_wait_ms`` is queue + cache init at the cloud, ``cloud_decode_ms`` the decoding of
    all ``n_tokens`` there; ``lost`` adds one RTT of retransmission to the upload.
    """
    owd = rtt_ms / 2000.0
    upload_end = trace.transfer_end(start_s, payload_bytes)
    if lost:
        upload_end += rtt_ms / 1000.0
    decode_start = upload_end + owd + cloud_wait_ms / 1000.0
    step = cloud_decode_ms / 1000.0 / n_tokens if n_tokens > 0 else 0.0
    first_made = decode_start + step
    last_made = decode_start + cloud_decode_ms / 1000.0
    if math.isinf(upload_end):
        first = last = math.inf
    else:
        first = trace.transfer_end(first_made, token_bytes) + owd
        carried = trace.transfer_end(first_made, n_tokens * token_bytes)
        last = max(last_made, carried) + owd
    return CallTimeline(
        start_s=start_s,
        upload_end_s=upload_end,
        decode_start_s=decode_start,
        step_s=step,
        n_tokens=n_tokens,
        owd_s=owd,
        token_bytes=token_bytes,
        first_token_s=first,
        last_token_s=last,
    )


def probe_rtt_ms(trace: Trace, cfg: LinkConfig, start_s: float, jitter: float) -> float:
    """Round trip of a probe (ping up, pong down) sent at ``start_s``; inf if it never returns."""
    rtt = rtt_ms_at(trace, cfg, start_s, jitter)
    up = trace.transfer_end(start_s, cfg.probe_bytes) + rtt / 2000.0
    if math.isinf(up):
        return math.inf
    down = trace.transfer_end(up, cfg.probe_bytes) + rtt / 2000.0
    return (down - start_s) * 1000.0
