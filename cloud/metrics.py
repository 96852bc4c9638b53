"""Prometheus metrics of the cloud decoder: what an operator sizes and alerts on.

One ``CollectorRegistry`` per server (not the process-global one), so tests and benchmarks
can run several replicas in one process without metric-name clashes. Names follow Prometheus
conventions (``_total`` counters, base units: seconds). The list is documented in
``docs/cloud-contract.md`` ("Observability").
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tandem.cloud.config import Address

log = logging.getLogger(__name__)

_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
_STAGE_BUCKETS = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
)  # fmt: skip
STAGES = ("validate", "codec", "queue", "join", "step", "emit", "send")
"""Stages of a Decode call timed by ``tandem_cloud_stage_seconds`` (docs/cloud-contract.md):
``validate`` (authentication and request checks, the tensor's decoding excluded), ``codec``
(decoding the hidden states), ``queue`` (submitted until joining the batch), ``join`` (an
iteration's cache-init and prefill runs), ``step`` (an iteration's batched decoder step),
``emit`` (an iteration's scheduler bookkeeping: plan, record, updates handed to streams) and
``send`` (one token or final message inside gRPC's write). Engine stages are observed once
per iteration, the others once per request or message."""
_TOKEN_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_SECONDS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class Metrics:
    """Every instrument of one server; label ``model`` is the served bundle's name."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tandem_cloud_requests",
            "Finished RPCs by method and gRPC status code (OK included).",
            ["method", "code"],
            registry=r,
        )
        self.errors = Counter(
            "tandem_cloud_request_errors",
            "RPCs that ended with a non-OK status, by method and code.",
            ["method", "code"],
            registry=r,
        )
        self.finishes = Counter(
            "tandem_cloud_finishes",
            "Decode streams that sent a final event, by model and finish reason.",
            ["model", "reason"],
            registry=r,
        )
        self.tokens = Counter(
            "tandem_cloud_tokens",
            "Tokens streamed to clients (prefix and EOS excluded).",
            ["model"],
            registry=r,
        )
        self.batch_size = Histogram(
            "tandem_cloud_batch_size",
            "Sequences advanced by one batched decoder step.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "tandem_cloud_step_seconds",
            "Duration of one scheduler iteration (joins, prefills and the batched step).",
            ["model"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "tandem_cloud_queue_seconds",
            "Time from a request's arrival until it joined the batch.",
            ["model"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "tandem_cloud_request_seconds",
            "Duration of Decode calls from arrival to the last event, any outcome.",
            ["model"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "tandem_cloud_stage_seconds",
            "Time in each stage of serving Decode calls, by model and stage (see STAGES).",
            ["model", "stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.active = Gauge(
            "tandem_cloud_active_sequences",
            "Sequences in the decoding batch.",
            ["model"],
            registry=r,
        )
        self.queued = Gauge(
            "tandem_cloud_queued_requests",
            "Requests waiting for a batch slot.",
            ["model"],
            registry=r,
        )
        self.model_errors = Counter(
            "tandem_cloud_model_errors",
            "Sequences failed by an exception inside the model runtime (answered INTERNAL).",
            ["model"],
            registry=r,
        )
        self.refused = Counter(
            "tandem_cloud_refused_calls",
            "Calls answered before they got a thread (tandem.admission): no or unknown token, "
            "a full lane, or no request message in time (CANCELLED), by lane and code.",
            ["lane", "code"],
            registry=r,
        )
        self.handoff_prefix_tokens = Histogram(
            "tandem_cloud_handoff_prefix_tokens",
            "Tokens a Handoff's device already had when its upload landed: the replica "
            "continued after them instead of decoding them again.",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.handoff_prefix_wait = Histogram(
            "tandem_cloud_handoff_prefix_wait_seconds",
            "Time from a Handoff's acknowledgement to its device's prefix (about one round "
            "trip), whenever the next message or the end of the client's stream came.",
            ["model"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.draining = Gauge(
            "tandem_cloud_draining",
            "1 while the replica is shutting down (health NOT_SERVING).",
            registry=r,
        )

    def stages(self, model: str) -> dict[str, Histogram]:
        """The stage histograms of one model, resolved once (``labels`` takes a lock)."""
        return {stage: self.stage_seconds.labels(model, stage) for stage in STAGES}


class MetricsEndpoint:
    """The ``/metrics`` HTTP server; ``port`` is the bound one (useful with port 0)."""

    def __init__(self, metrics: Metrics, address: Address) -> None:
        self._server, self._thread = start_http_server(
            address.port, addr=address.host, registry=metrics.registry
        )
        self.port = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
