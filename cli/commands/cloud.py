"""``tandem cloud``: run the cloud decoder service, or probe one.

``tandem cloud serve [--config cloud.yaml] [--bundle DIR] [--listen HOST:PORT]`` serves the
default model on 127.0.0.1:50051 with no arguments; flags override the file. It prints one line
with the bound address once it is SERVING (scripts and tests read the port from it when they
pass port 0). SIGTERM or Ctrl-C drains it: health NOT_SERVING, no new calls, in-flight streams
finish within ``grace_period_s``, exit status 0.

``tandem cloud health [--address HOST:PORT]`` asks a replica's grpc.health.v1 service and exits
0 only if it is SERVING — the container health check and an operator's quick look.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cloud", help="the cloud decoder service")
    cloud = p.add_subparsers(dest="cloud_command", metavar="ACTION")
    p.set_defaults(func=lambda args: p.print_help() or 0)

    serve = cloud.add_parser("serve", help="serve model bundles over gRPC (tandem.v1.Decoder)")
    serve.add_argument(
        "--config", default=None, help="cloud.yaml (every key: docs/configuration.md)"
    )
    serve.add_argument(
        "--bundle",
        action="append",
        default=None,
        help="model bundle directory or shipped name; repeat to serve several (default: shipped model)",
    )
    serve.add_argument("--listen", default=None, help="HOST:PORT (default 127.0.0.1:50051)")
    serve.add_argument(
        "--health-listen", default=None, help="extra plaintext health-only HOST:PORT"
    )
    serve.add_argument("--metrics-listen", default=None, help="Prometheus /metrics HOST:PORT")
    serve.add_argument("--replica-id", default=None, help="name in DecodeFinal.replica_id and logs")
    serve.add_argument("--log-format", choices=("text", "json"), default=None)
    serve.add_argument(
        "--check",
        action="store_true",
        help="validate the config, load the bundles and credentials, bind, then exit",
    )
    serve.set_defaults(func=run_serve)

    check = cloud.add_parser("health", help="query a replica's grpc.health.v1 status")
    check.add_argument("--address", default="127.0.0.1:50051", help="HOST:PORT to ask")
    check.add_argument("--service", default="", help="service name ('' = the whole server)")
    check.add_argument("--timeout-s", type=float, default=2.0, help="deadline of the check")
    check.add_argument("--tls-ca", default=None, help="CA file: connect with TLS")
    check.add_argument("--tls-cert", default=None, help="client certificate (mTLS)")
    check.add_argument("--tls-key", default=None, help="client key (mTLS)")
    check.add_argument("--server-name", default=None, help="TLS name to verify, if not the host")
    check.set_defaults(func=run_health)


def run_serve(args: argparse.Namespace) -> int:
    from tandem.cloud.config import load_cloud_config
    from tandem.cloud.server import create_server
    from tandem.logs import configure

    config = load_cloud_config(
        args.config,
        listen=args.listen,
        bundles=args.bundle,
        health_listen=args.health_listen,
        metrics_listen=args.metrics_listen,
        replica_id=args.replica_id,
        log_format=args.log_format,
    )
    configure(config.log_format, logging.DEBUG if args.verbose >= 2 else logging.INFO)
    server, _ = create_server(config)
    if args.check:
        server.stop()
        print(f"tandem cloud: config OK; would serve {_models(server)} on {server.address}")
        return 0
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        extras = [f"replica {server.replica_id}"]
        if server.health_port is not None:
            extras.append(f"health {config.health_listen.with_port(server.health_port)}")
        if server.metrics_port is not None:
            extras.append(f"metrics {config.metrics_listen.with_port(server.metrics_port)}")
        print(
            f"tandem cloud: serving {_models(server)} on {server.address} ({', '.join(extras)})",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
        print("tandem cloud: draining", file=sys.stderr, flush=True)
        _exit_by(config.grace_period_s + _EXIT_SLACK_S)
        server.drain()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


_EXIT_SLACK_S = 0.9
"""The process exits at most this long after the grace period, whatever is still open."""


def _exit_by(seconds: float) -> None:
    """Exit 0 after ``seconds`` even if the drain or the interpreter's exit is stuck.

    Why: the drain is bounded (``CloudServer.drain``), but exiting the interpreter joins every
    worker thread, and a handler stuck where cancellation cannot reach it would keep a
    SIGTERM'd replica alive (once seen after long attack traffic). Streams have had their
    grace period and their final events by then.
    """

    def hard_exit() -> None:
        print("tandem cloud: shutdown deadline passed; exiting now", file=sys.stderr, flush=True)
        os._exit(0)

    timer = threading.Timer(seconds, hard_exit)
    timer.daemon = True
    timer.start()


def _models(server) -> str:
    return ", ".join(f"{e.name} ({fp[:19]}…)" for fp, e in server.engines.items())


def run_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if args.tls_ca:

        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        creds = grpc.ssl_channel_credentials(
            read(args.tls_ca), read(args.tls_key), read(args.tls_cert)
        )
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(args.address, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s
            )
        except grpc.RpcError as exc:
            print(f"{args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
