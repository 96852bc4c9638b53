"""``tandem edge run``: the device daemon (local API + routing + cloud client)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edge", help="the edge agent daemon")
    edge_sub = p.add_subparsers(dest="edge_command", metavar="COMMAND", required=True)
    run_p = edge_sub.add_parser("run", help="run the agent until SIGTERM/SIGINT")
    run_p.add_argument(
        "--config", default=None, help="edge.yaml (validated; every key: docs/configuration.md)"
    )
    run_p.add_argument("--socket", default=None, help="override: Unix socket of the local API")
    run_p.add_argument("--tcp", default=None, help="override: loopback host:port of the local API")
    run_p.add_argument("--cloud", default=None, help="override: cloud address(es), comma-separated")
    run_p.add_argument("--bundle", default=None, help="override: model bundle")
    run_p.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="one event per line"
    )
    run_p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from tandem.edge.agent import Agent
    from tandem.edge.config import load_edge_config
    from tandem.edge.server import create_edge_server, prepare_socket
    from tandem.logs import configure

    configure(args.log_format, logging.INFO)
    cloud = None
    if args.cloud is not None:
        cloud = {"addresses": [a.strip() for a in args.cloud.split(",") if a.strip()]}
    config = load_edge_config(
        args.config, socket=args.socket, tcp=args.tcp, bundle=args.bundle, cloud=cloud
    )
    if config.socket:
        prepare_socket(config.socket)  # an unsafe socket directory fails before the model loads
    agent = Agent(config)
    server, where = create_edge_server(agent)
    if config.metrics_port:
        start_http_server(config.metrics_port, addr="127.0.0.1", registry=agent.metrics.registry)
    print(f"tandem edge: serving {where} with model {agent.model.manifest.name!r}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("tandem edge: draining", flush=True)
    server.stop(grace=config.drain_s).wait(config.drain_s + 1.0)  # bounded, whatever is open
    agent.close()
    return 0
