"""The local API: gRPC ``tandem.v1.Edge`` on a Unix domain socket (default) or loopback TCP.

A Unix socket is the default because a device daemon should not open a network port: the file's
permissions (owner-only unless configured otherwise) are the access control. A stale socket
file left by a crashed agent is removed at start — but only if nothing answers on it, so two
agents never steal each other's socket.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from concurrent import futures
from pathlib import Path

import grpc

from tandem.edge.agent import Agent, Outcome, Request
from tandem.errors import ConfigError, InputError, TandemError
from tandem.rpc import Undecodable, add_service
from tandem.v1 import edge_pb2, edge_pb2_grpc
from tandem.wire import check_request_id, finish_to_proto

log = logging.getLogger(__name__)

MAX_DEADLINE_MS = 10 * 60 * 1000


class EdgeServicer(edge_pb2_grpc.EdgeServicer):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def Generate(self, request: edge_pb2.GenerateRequest, context: grpc.ServicerContext):
        try:
            req = self._validate(request, context)
            stream = self.agent.generate(req)
            text_so_far = ""
            ids: list[int] = []
            pending: list[int] = []
            pending_start = 0
            last_sent = time.monotonic()
            interval_s = self.agent.config.piece_interval_ms / 1000.0

            def flush():
                nonlocal text_so_far, pending, last_sent
                text = self.agent.model.detokenize(ids) or ""
                piece = text[len(text_so_far) :] if text.startswith(text_so_far) else text
                text_so_far = text
                event = edge_pb2.GenerateEvent(
                    piece=edge_pb2.TextPiece(text=piece, ids=pending, start=pending_start)
                )
                pending, last_sent = [], time.monotonic()
                return event

            for item in stream:
                if not context.is_active():
                    stream.close()  # app went away: cancel cloud call / local decoding
                    return
                if isinstance(item, Outcome):
                    if pending:
                        yield flush()
                    yield edge_pb2.GenerateEvent(final=_final(item))
                    return
                if not pending:
                    pending_start = item.start
                ids.extend(item.ids)
                pending = pending + list(item.ids)
                # Coalesce tokens that come faster than the app could show them: one message
                # per interval instead of one per token (a gRPC message costs ~0.2 ms).
                if time.monotonic() - last_sent >= interval_s:
                    yield flush()
        except InputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except TandemError as exc:
            log.warning("request failed", extra={"error": str(exc)})
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    def _validate(self, request: edge_pb2.GenerateRequest | Undecodable, context) -> Request:
        if isinstance(request, Undecodable):
            raise InputError(request.describe())
        if not request.text.strip():
            raise InputError("text: must not be empty")
        if request.request_id:  # empty: the agent assigns one
            check_request_id(request.request_id)  # the cloud's rule: it is forwarded there
        languages = self.agent.model.manifest.languages
        target = request.target_language or None
        if target is not None:
            self.agent.model.manifest.language_token(target, "target_language")
        if (
            languages
            and target is None
            and self.agent.model.manifest.default_forced_first_token is None
        ):
            raise InputError(
                f"target_language: required by this model (one of {', '.join(sorted(languages))})"
            )
        limit = self.agent.model.manifest.dims.max_target_length - 1
        if request.max_new_tokens > limit:
            raise InputError(
                f"max_new_tokens: must be at most {limit}, got {request.max_new_tokens}"
            )
        if request.deadline_ms > MAX_DEADLINE_MS:
            raise InputError(f"deadline_ms: must be at most {MAX_DEADLINE_MS}")
        deadline_s = request.deadline_ms / 1000.0 if request.deadline_ms else None
        remaining = context.time_remaining()
        if remaining is not None:
            deadline_s = min(deadline_s or remaining, remaining)
        return Request(
            text=request.text,
            target=target,
            max_new_tokens=request.max_new_tokens or None,
            local_only=request.local_only,
            deadline_s=deadline_s,
            request_id=request.request_id,
        )


def _final(outcome: Outcome) -> edge_pb2.GenerateFinal:
    return edge_pb2.GenerateFinal(
        route=outcome.route,
        reason=outcome.reason,
        fallbacks=outcome.fallbacks,
        encode_ms=outcome.encode_ms,
        upload_ms=outcome.upload_ms,
        first_token_ms=outcome.first_token_ms,
        total_ms=outcome.total_ms,
        text=outcome.text,
        ids=outcome.ids,
        token_count=len(outcome.ids),
        finish_reason=finish_to_proto(outcome.finish),
    )


def _socket_in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def prepare_socket(path: str) -> Path:
    """Create the socket's directory (owner-only) and clear a stale socket file."""
    sock = Path(path)
    sock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if sock.exists() or sock.is_symlink():
        if not stat.S_ISSOCK(sock.lstat().st_mode):
            raise ConfigError(
                f"socket path {sock} exists and is not a socket; refusing to remove it"
            )
        if _socket_in_use(sock):
            raise ConfigError(f"socket {sock} is in use by another process (another agent?)")
        log.info("removing stale socket", extra={"path": str(sock)})
        sock.unlink()
    return sock


def create_edge_server(agent: Agent, max_workers: int = 16) -> tuple[grpc.Server, dict]:
    """Build and start the local API server; returns (server, {"socket": path, "tcp_port": p})."""
    config = agent.config
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="edge"),
        options=[("grpc.max_receive_message_length", 4 * config.max_text_chars + 1024)],
    )
    add_service(
        server,
        edge_pb2_grpc.add_EdgeServicer_to_server,
        EdgeServicer(agent),
        {"Generate": edge_pb2.GenerateRequest},
    )
    where: dict = {}
    if config.socket:
        sock = prepare_socket(config.socket)
        old_umask = os.umask(0o177)  # the socket is created owner-only, then chmod'ed if asked
        try:
            server.add_insecure_port(f"unix:{sock}")
        finally:
            os.umask(old_umask)
        where["socket"] = str(sock)
    if config.tcp:
        port = server.add_insecure_port(config.tcp)
        if port == 0:
            raise ConfigError(f"cannot listen on {config.tcp}")
        where["tcp_port"] = port
    server.start()
    if config.socket:
        os.chmod(config.socket, config.socket_mode)
    return server, where
