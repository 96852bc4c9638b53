"""Building, starting and draining one replica of the cloud decoder service.

``create_server(config)`` loads the model bundles, reads credentials, binds the ports and
returns a not-yet-started ``CloudServer`` with the bound port (pass port 0 to get a free one,
as the tests do). Everything that can fail on bad configuration fails here, before the replica
reports SERVING. ``CloudServer.drain`` is the graceful shutdown used on SIGTERM: health goes
NOT_SERVING, new calls are refused, in-flight streams run until the grace period is nearly
over and then end with FINISH_REASON_CANCELLED, which clients resume elsewhere.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tandem.admission import Admission, Lane
from tandem.cloud.auth import Authenticator, load_tokens
from tandem.cloud.config import Address, CloudConfig
from tandem.cloud.engine import Engine
from tandem.cloud.limits import ClientLimiter
from tandem.cloud.metrics import Metrics, MetricsEndpoint
from tandem.cloud.pacing import Pacing
from tandem.cloud.scheduler import Scheduler
from tandem.cloud.servicer import DecoderServicer
from tandem.cloud.validation import ServedModel
from tandem.defaults import bundle_path
from tandem.errors import ConfigError
from tandem.rpc import add_service
from tandem.runtime.seq2seq import Seq2Seq
from tandem.v1 import decoder_pb2, decoder_pb2_grpc

log = logging.getLogger(__name__)

DECODER_SERVICE = decoder_pb2.DESCRIPTOR.services_by_name["Decoder"].full_name
"""``tandem.v1.Decoder``: the health service reports it (and "") as SERVING when ready."""

_DECODE_REFUSALS = 16
"""Decode calls beyond the schedulers' room (batch + queue) that may still run to be refused
by a scheduler; past that the ``decode`` lane refuses them itself."""
_SERVICE_CALLS = 8
"""ListModels and reflection calls served at once (the ``service`` lane)."""
_HEALTH_FIRST_MESSAGE_S = 1.0
"""A health check's request is a few bytes: this long is plenty to deliver it."""
_REFUSAL_HEADROOM = 256
"""``maximum_concurrent_rpcs`` above what the lanes may hold: calls being refused at once
(each holds a slot for microseconds). The lanes, not this limit, bound real work; gRPC's own
RESOURCE_EXHAUSTED then only answers a flood of refusals."""
_DRAIN_SLACK_S = 0.5
"""After the grace period, how long the drain waits for gRPC's own stop before forcing it:
the process must exit within grace + 1 s whatever is still open."""
DECODE_METHOD = f"/{DECODER_SERVICE}/Decode"
HANDOFF_METHOD = f"/{DECODER_SERVICE}/Handoff"
HEALTH_PREFIX = "/grpc.health.v1.Health/"


def lane_of(method: str) -> str:
    """Admission lane of a full method name: Decode, Handoff, health, or everything else.

    Handoff has a lane of its own: a call waiting for its device's prefix holds a thread (at
    most ``limits.handoff_prefix_timeout_s``), and such calls must never take Decode's."""
    if method == DECODE_METHOD:
        return "decode"
    if method == HANDOFF_METHOD:
        return "handoff"
    if method.startswith(HEALTH_PREFIX):
        return "health"
    return "service"


class CloudServer:
    """One replica: gRPC server(s), one engine per served model, health, metrics."""

    def __init__(
        self,
        config: CloudConfig,
        grpc_server: grpc.Server,
        port: int,
        health_servicer: health.HealthServicer,
        health_server: grpc.Server | None,
        health_port: int | None,
        engines: Mapping[str, Engine],
        metrics: Metrics,
        replica_id: str,
        max_message_bytes: int,
        admissions: Sequence[Admission] = (),
    ) -> None:
        self.config = config
        self.port = port
        self.health_port = health_port
        self.replica_id = replica_id
        self.metrics = metrics
        self.engines = dict(engines)
        self.max_message_bytes = max_message_bytes
        self.metrics_port: int | None = None
        self._server = grpc_server
        self._health = health_servicer
        self._health_server = health_server
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._admissions = tuple(admissions)
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        """Where clients connect, with the bound port."""
        return str(self.config.listen.with_port(self.port))

    def start(self) -> None:
        """Start engines and servers, then report SERVING."""
        for engine in self.engines.values():
            engine.start()
        if self.config.metrics_listen is not None:
            self._metrics_endpoint = MetricsEndpoint(self.metrics, self.config.metrics_listen)
            self.metrics_port = self._metrics_endpoint.port
        self._server.start()
        if self._health_server is not None:
            self._health_server.start()
        for service in ("", DECODER_SERVICE):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            extra={
                "replica_id": self.replica_id,
                "address": self.address,
                "models": [e.name for e in self.engines.values()],
            },
        )

    def drain(self, grace_s: float | None = None) -> None:
        """Graceful shutdown; returns when every stream has ended (at most ``grace_s``).

        Streams still running shortly before the grace period ends get a final
        FINISH_REASON_CANCELLED (tokens so far stay valid), so clients see a clean end rather
        than a transport error.
        """
        grace_s = self.config.grace_period_s if grace_s is None else grace_s
        started = time.monotonic()
        log.info("draining", extra={"replica_id": self.replica_id, "grace_s": grace_s})
        self.metrics.draining.set(1)
        self._health.enter_graceful_shutdown()
        # Watchers have seen NOT_SERVING; their streams would otherwise hold the drain for the
        # whole grace period (they never hang up on their own).
        self._end_watches()
        # Finals need time to reach clients before gRPC aborts what is left at grace_s.
        cancel_at = started + grace_s - min(1.0, 0.5 * grace_s)
        for engine in self.engines.values():
            engine.drain(cancel_at)
        if not self._server.stop(grace_s).wait(grace_s + _DRAIN_SLACK_S):
            # gRPC's stop did not finish (once seen after long attack traffic): the drain is
            # bounded anyway, what is left is cancelled and the process may exit.
            log.warning("drain deadline passed; stopping at once", extra={"grace_s": grace_s})
            self._server.stop(None).wait(_DRAIN_SLACK_S / 2)
        self._finish()
        log.info(
            "drained",
            extra={"replica_id": self.replica_id, "s": round(time.monotonic() - started, 3)},
        )

    def stop(self) -> None:
        """Immediate stop: in-flight calls are aborted (tests, errors during start)."""
        self._health.enter_graceful_shutdown()
        self._end_watches()
        self._server.stop(None).wait(_DRAIN_SLACK_S)
        self._finish()

    def _end_watches(self) -> None:
        for admission in self._admissions:
            ended = admission.end_streams("health")
            if ended:
                log.info("health watches ended", extra={"streams": ended})

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._stopped.wait(timeout_s)

    def _finish(self) -> None:
        for engine in self.engines.values():
            engine.stop()
        if self._health_server is not None:
            self._health_server.stop(None).wait(_DRAIN_SLACK_S / 2)
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
            self._metrics_endpoint = None
        self._stopped.set()


def create_server(
    config: CloudConfig,
    *,
    environ: Mapping[str, str] | None = None,
    models: Sequence[Seq2Seq] | None = None,
) -> tuple[CloudServer, int]:
    """A bound, not yet started replica and its port.

    ``environ`` is where ``auth.tokens_env`` is looked up (default: the process environment).
    ``models`` lets a caller that already loaded bundles (tests and benchmarks running several
    servers) skip loading ``config.bundles``; engines share the models' ONNX sessions, which
    onnxruntime allows to run concurrently.
    """
    environ = os.environ if environ is None else environ
    tokens = load_tokens(config.auth, environ) if config.auth.enabled else []
    authenticator = Authenticator(tokens, require_token=config.auth.enabled)
    credentials = _credentials(config)

    loaded = list(models) if models is not None else _load_models(config)
    served: dict[str, ServedModel] = {}
    by_fingerprint: dict[str, Seq2Seq] = {}
    for model in loaded:
        if model.fingerprint in served:
            raise ConfigError(
                f"bundles: {model.manifest.name!r} and {served[model.fingerprint].name!r} have "
                "the same fingerprint; serve each model bundle once"
            )
        served[model.fingerprint] = ServedModel.from_manifest(
            model.manifest, model.fingerprint, config.limits.max_new_tokens
        )
        by_fingerprint[model.fingerprint] = model

    metrics = Metrics()
    sched = config.scheduler
    retry_after_s = sched.retry_after_ms / 1000.0
    margin_s = config.limits.deadline_margin_ms / 1000.0
    engines = {
        fp: Engine(
            model,
            Scheduler(sched.max_batch, sched.max_queue, retry_after_s, deadline_margin_s=margin_s),
            metrics,
        )
        for fp, model in by_fingerprint.items()
    }
    replica_id = config.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    servicer = DecoderServicer(
        engines,
        served,
        authenticator,
        ClientLimiter(config.limits.max_streams_per_client, retry_after_s),
        metrics,
        replica_id,
        config.limits.default_deadline_s,
        pacing={
            fp: Pacing(
                sched.stream_interval_ms / 1000.0,
                sched.stream_hold_max_ms / 1000.0,
                sched.stream_cpu_share,
            )
            for fp in engines
        },
        handoff_prefix_timeout_s=config.limits.handoff_prefix_timeout_s,
    )
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1),
    )
    for service in ("", DECODER_SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    max_message = max(m.max_message_bytes() for m in served.values())
    limits = config.limits

    def refused(lane: str, method: str, code: grpc.StatusCode) -> None:
        metrics.refused.labels(lane, code.name).inc()

    health_lane = Lane(
        "health",
        limits.max_health_calls,
        limits.max_waiting_calls,
        min(_HEALTH_FIRST_MESSAGE_S, limits.first_message_timeout_s),
        authenticate=False,  # probes (Kubernetes, Docker, the edge's pings) carry no token
        retry_after_s=retry_after_s,
    )
    admission = Admission(
        (
            # One running Decode per batch row and queue place, plus a few to carry the
            # scheduler's own refusals ("queue is full", with its retry hint).
            Lane(
                "decode",
                len(engines) * (sched.max_batch + sched.max_queue) + _DECODE_REFUSALS,
                limits.max_waiting_calls,
                limits.first_message_timeout_s,
                retry_after_s=retry_after_s,
            ),
            Lane(
                "handoff",
                len(engines) * (sched.max_batch + sched.max_queue) + _DECODE_REFUSALS,
                limits.max_waiting_calls,
                limits.first_message_timeout_s,
                retry_after_s=retry_after_s,
                stream_first_message=True,
            ),
            Lane(
                "service",
                _SERVICE_CALLS,
                limits.max_waiting_calls,
                limits.first_message_timeout_s,
                retry_after_s=retry_after_s,
            ),
            health_lane,
        ),
        lane_of,
        check=authenticator.check_metadata,
        on_refused=refused,
    )
    server = grpc.server(
        # Every lane brings its own threads; this pool only serves what no lane claims.
        futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="grpc"),
        interceptors=(admission,),
        options=_options(config, max_message),
        maximum_concurrent_rpcs=admission.threads + _REFUSAL_HEADROOM,
    )
    add_service(
        server,
        decoder_pb2_grpc.add_DecoderServicer_to_server,
        servicer,
        {
            "Decode": decoder_pb2.DecodeRequest,
            "Handoff": decoder_pb2.HandoffRequest,
            "ListModels": decoder_pb2.ListModelsRequest,
        },
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        names = (
            DECODER_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
    port = _bind(server, config.listen, credentials, "listen")

    health_server = None
    health_port = None
    admissions = [admission]
    if config.health_listen is not None:
        health_admission = Admission((health_lane,), lambda method: "health", on_refused=refused)
        admissions.append(health_admission)
        health_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"),
            interceptors=(health_admission,),
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_concurrent_streams", config.server.max_concurrent_streams),
            ],
            maximum_concurrent_rpcs=health_admission.threads + _REFUSAL_HEADROOM,
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = _bind(health_server, config.health_listen, None, "health_listen")

    cloud = CloudServer(
        config,
        server,
        port,
        health_servicer,
        health_server,
        health_port,
        engines,
        metrics,
        replica_id,
        max_message,
        admissions,
    )
    return cloud, port


def _load_models(config: CloudConfig) -> list[Seq2Seq]:
    """Load each bundle and warm it (``Seq2Seq.warm_up``) before the replica says SERVING."""
    models = []
    for name in config.bundles or (None,):
        model = Seq2Seq.load(bundle_path(name), config.session)
        warm_ms = model.warm_up()
        log.info(
            "model warm", extra={"model": model.manifest.name, "warm_up_ms": round(warm_ms, 1)}
        )
        models.append(model)
    return models


def _options(config: CloudConfig, max_message: int) -> list[tuple[str, int]]:
    age_ms = int(config.server.max_connection_age_s * 1000)
    return [
        ("grpc.max_receive_message_length", max_message),
        ("grpc.so_reuseport", 0),  # a second replica on a taken port must fail, not share it
        ("grpc.max_connection_age_ms", age_ms),
        # Streams on an aged connection may finish: as long as any call may run.
        ("grpc.max_connection_age_grace_ms", int(config.limits.default_deadline_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            int(config.server.keepalive_min_interval_s * 1000),
        ),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_concurrent_streams", config.server.max_concurrent_streams),
    ]


def _credentials(config: CloudConfig) -> grpc.ServerCredentials | None:
    tls = config.tls
    if not tls.enabled:
        return None
    cert = _read(tls.cert_file, "tls.cert_file")
    key = _read(tls.key_file, "tls.key_file")
    client_ca = _read(tls.client_ca_file, "tls.client_ca_file") if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read(path: str | None, key: str) -> bytes:
    try:
        return Path(str(path)).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from exc


def _bind(
    server: grpc.Server, address: Address, credentials: grpc.ServerCredentials | None, key: str
) -> int:
    target = str(address)
    try:
        if credentials is None:
            port = server.add_insecure_port(target)
        else:
            port = server.add_secure_port(target, credentials)
    except RuntimeError as exc:
        raise ConfigError(f"{key}: cannot listen on {target}: {exc}") from exc
    if port == 0:
        raise ConfigError(f"{key}: cannot listen on {target} (address in use or not local?)")
    return port
