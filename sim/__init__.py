"""Trace-driven simulation of routing policies.

Replays real bandwidth traces (``trace``, ``link``), a device load series (``load``) and a
workload drawn from the default model's data (``workload``) through the very policy code the
edge agent runs (``tandem.policy``), and reports latency, cloud share, bytes and regret against
a hindsight oracle (``runner``, ``report``). The runner plays each request on the simulated
device (``device``), races a HANDOFF (``handoff``) and feeds the agent what it would have
measured (``senses``). See docs/simulation.md.
"""

from __future__ import annotations

from tandem.sim.link import LinkConfig
from tandem.sim.runner import (
    SIM_POLICIES,
    RunResult,
    Scenario,
    make_draws,
    run_experiment,
    simulate,
)
from tandem.sim.trace import Trace, load_trace, load_traces, parse_trace

__all__ = [
    "SIM_POLICIES",
    "LinkConfig",
    "RunResult",
    "Scenario",
    "Trace",
    "load_trace",
    "load_traces",
    "make_draws",
    "parse_trace",
    "run_experiment",
    "simulate",
]
