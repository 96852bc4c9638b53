"""ONNX Runtime session options, as one validated value shared by every part of a bundle.

Why a dataclass of our own rather than ``ort.SessionOptions``: configs are YAML, must be checked
when loaded (a typo in a provider name should fail at start, not on the first request), and the
same settings must reach the encoder, the cache initializer and the decoder alike. The edge and
the cloud config hold it as their ``session`` section, built by ``tandem.config.build``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import onnxruntime as ort

from tandem.config import bound, one_of, require, shown

GRAPH_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class SessionConfig:
    """How ONNX Runtime runs the parts of a model bundle."""

    intra_op_threads: int = 0
    """Threads inside one operator; 0 lets ONNX Runtime use one per physical core, or one per
    core this process may run on where that is fewer (``usable_cores``)."""
    inter_op_threads: int = 1
    """Threads across independent operators; decoder graphs are sequential, so 1 is best."""
    graph_optimization: str = "all"
    """One of disable, basic, extended, all."""
    providers: tuple[str, ...] = field(default=("CPUExecutionProvider",))
    """Execution providers in order of preference; each must be available in this build."""
    allow_spinning: bool = True
    """Let the decoder's idle intra-op threads spin between steps: lowest latency on a quiet
    machine. On a busy device (other apps on the same cores) spinning threads steal time from
    each other; set False. The encoder and the cache initializer never spin: they run once per
    request, so their threads would only spin into the decoder steps that follow them (each
    part has its own thread pool) and slow those down."""

    def __post_init__(self) -> None:
        bound(self, "intra_op_threads", "inter_op_threads", ge=0)
        one_of(self, "graph_optimization", sorted(GRAPH_OPTIMIZATION_LEVELS))
        require(bool(self.providers), "providers must name at least one execution provider")
        available = ort.get_available_providers()
        for provider in self.providers:
            require(
                provider in available,
                f"providers: {shown(provider)} is not available in this onnxruntime build "
                f"(available: {', '.join(available)})",
            )

    def to_ort(self, spin: bool | None = None) -> ort.SessionOptions:
        """Options for one part; ``spin`` overrides ``allow_spinning`` (see there)."""
        spin = self.allow_spinning if spin is None else spin
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads or usable_cores() or 0
        options.inter_op_num_threads = self.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[self.graph_optimization]
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3  # errors only: warnings about unused initializers are noise
        return options


def usable_cores() -> int | None:
    """How many cores this process may run on, where that is fewer than the machine has; None
    otherwise (ONNX Runtime's own default then stands).

    Why: ONNX Runtime sizes its default pool from the machine's cores and ignores the process's
    CPU affinity, so a replica confined to one core (a Kubernetes static CPU policy, a cpuset,
    ``taskset``) would run two spinning threads on it, each stealing the other's time.
    """
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    return allowed if allowed < (os.cpu_count() or allowed) else None
