"""ONNX Runtime session options, as one validated value shared by every part of a bundle.

Why a dataclass of our own rather than ``ort.SessionOptions``: configs are YAML, must be checked
when loaded (a typo in a provider name should fail at start, not on the first request), and the
same settings must reach the encoder, the cache initializer and the decoder alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort

from tandem.errors import ConfigError

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
    """Threads inside one operator; 0 lets ONNX Runtime use one per physical core."""
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
        if self.intra_op_threads < 0:
            raise ConfigError(f"intra_op_threads must be >= 0, got {self.intra_op_threads}")
        if self.inter_op_threads < 0:
            raise ConfigError(f"inter_op_threads must be >= 0, got {self.inter_op_threads}")
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise ConfigError(
                f"graph_optimization must be one of {sorted(GRAPH_OPTIMIZATION_LEVELS)}, "
                f"got {self.graph_optimization!r}"
            )
        if not self.providers:
            raise ConfigError("providers must name at least one execution provider")
        available = ort.get_available_providers()
        for provider in self.providers:
            if provider not in available:
                raise ConfigError(
                    f"execution provider {provider!r} is not available in this onnxruntime "
                    f"build (available: {', '.join(available)})"
                )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "session") -> SessionConfig:
        """Build from a YAML mapping, rejecting unknown keys so typos never pass silently."""
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        data = dict(data or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        if "providers" in data:
            data["providers"] = tuple(data["providers"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    def to_ort(self, spin: bool | None = None) -> ort.SessionOptions:
        """Options for one part; ``spin`` overrides ``allow_spinning`` (see there)."""
        spin = self.allow_spinning if spin is None else spin
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[self.graph_optimization]
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3  # errors only: warnings about unused initializers are noise
        return options
