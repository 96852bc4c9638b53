"""Routing policy: observations in, decision out. Pure, deterministic, numpy/stdlib only.

The edge agent and the simulator call exactly these functions::

    from tandem.policy import (Observations, PolicyConfig, Profile, decide, remember,
                               NetworkState, observe_rtt, observe_upload, observe_ttft,
                               observe_outcome, estimate, LengthModel, observe_length,
                               predict_length)

See docs/policy.md for how the pieces fit and docs/simulation.md for how they are evaluated.
"""

from __future__ import annotations

from tandem.policy.config import (
    CODECS,
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
from tandem.policy.length import LengthModel, LengthPrediction, observe_length, predict_length
from tandem.policy.observations import Decision, Observations, Route
from tandem.policy.profile import Profile

__all__ = [
    "CODECS",
    "POLICIES",
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
