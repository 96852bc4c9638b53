"""Prometheus metrics of the edge agent: requests by route, fallbacks by reason, latency,
and the estimators' current beliefs (so an operator sees *why* traffic moved).

Each agent has its own registry, so several agents in one process (tests) never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tandem_edge_requests", "Answered requests by the route that produced the answer",
            ["route"], registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "tandem_edge_fallbacks", "Requests moved to local decoding, by reason", ["reason"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "tandem_edge_request_seconds", "End-to-end request latency", ["route"],
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.violations = Counter(
            "tandem_edge_cloud_violations",
            "Cloud streams that broke the contract (resumed locally), by what was wrong",
            ["reason"], registry=r,
        )  # fmt: skip
        self.handoffs = Counter(
            "tandem_edge_handoffs",
            "HANDOFF requests by how they ended: cloud (the cloud overtook and finished), local "
            "(local decoding finished first), or the reason the cloud was dropped",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.radio_j = Counter(
            "tandem_edge_radio_joules",
            "Radio energy the cloud calls added, as the policy's model of the network type "
            "prices it (promotion, transfer, tail)", registry=r,
        )  # fmt: skip
        self.rtt = Gauge("tandem_edge_rtt_ms", "Estimated RTT to the cloud (ms)", registry=r)
        self.uplink = Gauge("tandem_edge_uplink_bps", "Estimated uplink (bit/s)", registry=r)
        self.loss = Gauge("tandem_edge_loss_rate", "Recent failure rate of cloud calls", registry=r)
        self.breaker = Gauge(
            "tandem_edge_breaker_open", "1 while the cloud circuit breaker is open", registry=r
        )
        self.counts: dict[str, int] = {}

    def fallback(self, reason: str) -> None:
        self.fallbacks.labels(reason=reason).inc()
        self.counts[f"fallback:{reason}"] = self.counts.get(f"fallback:{reason}", 0) + 1

    def violation(self, reason: str) -> None:
        self.violations.labels(reason=reason).inc()
        self.counts[f"violation:{reason}"] = self.counts.get(f"violation:{reason}", 0) + 1

    def handoff(self, outcome: str) -> None:
        self.handoffs.labels(outcome=outcome).inc()
        self.counts[f"handoff:{outcome}"] = self.counts.get(f"handoff:{outcome}", 0) + 1

    def radio(self, joules: float) -> None:
        self.radio_j.inc(max(0.0, joules))

    def finished(self, outcome) -> None:
        self.requests.labels(route=outcome.route).inc()
        self.latency.labels(route=outcome.route).observe(outcome.total_ms / 1000.0)
        self.counts[outcome.route] = self.counts.get(outcome.route, 0) + 1

    def estimates(self, est, breaker_state) -> None:
        if est.rtt_ms is not None:
            self.rtt.set(est.rtt_ms)
        if est.uplink_bps is not None:
            self.uplink.set(est.uplink_bps)
        self.loss.set(est.loss_rate)
        self.breaker.set(1.0 if str(breaker_state) == "open" else 0.0)
