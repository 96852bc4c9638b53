"""Handoff: how one HANDOFF request plays out — the race between local decoding and the cloud.

The device decodes at once while the hidden states upload; the cloud takes over from the
device's prefix and the device switches to its stream, or resumes locally when it stalls. Kept
apart from the runner because it is the one route whose timeline is a race of its own, played
exactly as the edge agent can run it (docs/policy.md, "HANDOFF: the race").
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from tandem.policy import PolicyConfig, Profile
from tandem.policy.knowledge import CallDone, CallFailed, Event
from tandem.sim.device import Device
from tandem.sim.trace import Trace


@dataclass(frozen=True)
class Handoff:
    """How one HANDOFF request played out."""

    finish_s: float
    call_end_s: float
    """When the call stopped holding the radio: its last token, or its cancellation."""
    up_bytes: float
    down_bytes: float
    switched: bool
    resumed: bool
    """After the switch the cloud stalled or ran out of time and the device resumed locally."""
    timed_out: bool
    learnt: tuple[Event, ...]


def play_handoff(
    trace: Trace,
    dev: Device,
    cloud: Profile,
    cfg: PolicyConfig,
    cloud_batch: int,
    cloud_queue_ms: float,
    src_len: int,
    steps: int,
    t_e: float,
    nbytes: int,
    rtt_ms: float,
    lost: bool,
    queue_ms: float,
    book,
) -> Handoff:
    """Play one HANDOFF (docs/policy.md, "HANDOFF"), exactly as an agent can run it:

    1. at ``t_e`` the device starts decoding at once and the upload of the hidden states starts
       (the local run takes the device profile's ``race_overhead_ms`` longer than alone);
    2. when the upload has gone through the link, the device sends its prefix — the ``k0``
       tokens it has decoded by then — and ends its side of the call;
    3. the cloud waits in its queue, builds its cache, forces the prefix in one pass (costed as
       an encoder pass over ``k0`` tokens, as the device's own resume is) and decodes tokens
       ``k0+1 .. n``, streaming them as they are made;
    4. the device switches to the cloud's stream at the first cloud token it has not decoded
       itself, and stops decoding; if the local run finishes first, the call is cancelled;
    5. after the switch, a gap of ``handoff_stall_ms`` without a token, or the call deadline,
       makes the device resume locally from the tokens it has (prefix-forced).
    """
    p = dev.profile
    start, local_end, lane = dev.decode_slot(t_e, steps)
    slow = dev.slow(start)
    # Racing costs the local run the profile's race_overhead_ms, spread over its steps.
    race_ms = p.race_overhead_ms / max(steps, 1)
    local_at = [start + (p.decode_ms(k) * slow + race_ms * k) / 1000.0 for k in range(1, steps + 1)]
    local_end += p.race_overhead_ms / 1000.0
    local_at[-1] = local_end
    owd = rtt_ms / 2000.0
    up_end = trace.transfer_end(t_e, nbytes) + (rtt_ms / 1000.0 if lost else 0.0)

    def uploaded_by(t_s: float) -> float:
        if t_s >= up_end:
            return float(nbytes)
        return min(float(nbytes), trace.bytes_between(t_e, t_s))

    if not up_end < local_end:  # the local run is done before the prefix could go: cancel
        book(start, local_end, lane)
        return Handoff(local_end, local_end, uploaded_by(local_end), 0.0, False, False, False, ())
    k0 = bisect.bisect_right(local_at, up_end)
    prefix_bytes = cfg.token_bytes + cfg.prefix_token_bytes * k0
    prefix_end = trace.transfer_end(up_end, prefix_bytes)
    wait_ms = queue_ms + cloud.request_overhead_ms + cloud.encoder_ms(src_len)
    if k0:
        wait_ms += cloud.encoder_ms(k0)
    decode_start = prefix_end + owd + wait_ms / 1000.0
    batch = cloud_batch
    base = cloud.decode_ms(k0, batch)
    m = steps - k0
    arrivals: list[float] = []
    first_made = decode_start + (cloud.decode_ms(k0 + 1, batch) - base) / 1000.0
    if math.isfinite(prefix_end):
        for j in range(1, m + 1):
            made = decode_start + (cloud.decode_ms(k0 + j, batch) - base) / 1000.0
            carried = trace.transfer_end(first_made, j * cfg.token_bytes)
            arrivals.append(max(made, carried) + owd)
    switch_j = None
    for j, a in enumerate(arrivals, start=1):
        if a >= local_end:
            break
        if local_at[k0 + j - 1] > a:
            switch_j = j
            break

    def up_by(t_s: float) -> float:
        return uploaded_by(t_s) + (prefix_bytes if prefix_end <= t_s else 0.0)

    def down_by(t_s: float) -> float:
        return bisect.bisect_right(arrivals, t_s) * cfg.token_bytes

    ttft_ms = (arrivals[0] - t_e) * 1000.0 if arrivals else None
    done_event = CallDone  # learnt when the call ended well (tokens came, nothing broke)
    if switch_j is None:
        book(start, local_end, lane)
        learnt: tuple[Event, ...] = ()
        if arrivals and arrivals[0] <= local_end:
            learnt = (done_event(local_end, nbytes, ttft_ms, up_end - t_e, cloud_queue_ms),)
        return Handoff(
            local_end, local_end, up_by(local_end), down_by(local_end), False, False, False, learnt
        )
    t_sw = arrivals[switch_j - 1]
    book(start, t_sw, lane)
    deadline = t_e + cfg.call_deadline_ms / 1000.0
    stall_s = cfg.handoff_stall_ms / 1000.0
    cut = None
    for q in range(switch_j, m + 1):  # after token k0+q has arrived
        last = arrivals[q - 1]
        if last > deadline:
            cut, received, timed_out = deadline, k0 + q - 1, True
            break
        if q < m and arrivals[q] - last > stall_s:
            at = last + stall_s
            cut, received, timed_out = min(at, deadline), k0 + q, deadline < at
            break
    if cut is None:
        finish = arrivals[-1]
        learnt = (done_event(finish, nbytes, ttft_ms, up_end - t_e, cloud_queue_ms),)
        return Handoff(finish, finish, up_by(finish), down_by(finish), True, False, False, learnt)
    start2, finish, lane2 = dev.decode_slot(cut, steps, prefix=received)
    book(start2, finish, lane2)
    return Handoff(finish, cut, up_by(cut), down_by(cut), True, True, timed_out, (CallFailed(cut),))
