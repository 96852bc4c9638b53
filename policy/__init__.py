"""Routing policy: observations in, decision out. Pure, deterministic, numpy/stdlib only.

The edge agent and the simulator both learn through one ``AgentKnowledge``
(``tandem.policy.knowledge``: the estimators and the length model below, fed one event at a
time) and route through the same ``decide``::

    from tandem.policy import AgentKnowledge, PolicyConfig, Profile, decide
    k = AgentKnowledge(cfg, device); k.probe_result(t, rtt_ms); ...
    decision = decide(k.observations(t, src_len, lang, encode_ms), device, cloud, cfg,
                      k.policy_state)

See docs/policy.md for how the pieces fit and docs/simulation.md for how they are evaluated.
"""

from __future__ import annotations

from tandem.policy.config import (
    CODECS,
    OBJECTIVES,
    POLICIES,
    EstimatorConfig,
    LengthConfig,
    PolicyConfig,
    payload_bytes,
)
from tandem.policy.decide import (
    PolicyState,
    RouteCosts,
    decide,
    load_from_timing,
    predict_costs,
    remember,
    slowdown,
)
from tandem.policy.energy import (
    RADIOS,
    RadioModel,
    RadioState,
    compute_j,
    marginal_j,
    transfer_j,
)
from tandem.policy.estimators import (
    NetworkEstimate,
    NetworkState,
    estimate,
    observe_outcome,
    observe_probe_result,
    observe_probe_sent,
    observe_rtt,
    observe_ttft,
    observe_upload,
)
from tandem.policy.knowledge import AgentKnowledge
from tandem.policy.length import LengthModel, LengthPrediction, observe_length, predict_length
from tandem.policy.observations import Decision, Observations, Route
from tandem.policy.profile import Profile

__all__ = [
    "AgentKnowledge",
    "CODECS",
    "OBJECTIVES",
    "POLICIES",
    "RADIOS",
    "RadioModel",
    "RadioState",
    "compute_j",
    "marginal_j",
    "transfer_j",
    "Decision",
    "EstimatorConfig",
    "LengthConfig",
    "LengthModel",
    "LengthPrediction",
    "NetworkEstimate",
    "NetworkState",
    "Observations",
    "PolicyConfig",
    "PolicyState",
    "Profile",
    "Route",
    "RouteCosts",
    "decide",
    "estimate",
    "load_from_timing",
    "observe_length",
    "observe_outcome",
    "observe_probe_result",
    "observe_probe_sent",
    "observe_rtt",
    "observe_ttft",
    "observe_upload",
    "payload_bytes",
    "predict_costs",
    "predict_length",
    "remember",
    "slowdown",
]
