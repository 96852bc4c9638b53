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

from tandem.admission import Admission, Lane
from tandem.edge.agent import Agent, Outcome, Request
from tandem.errors import ConfigError, InputError, TandemError
from tandem.rpc import Undecodable, add_service, status_code
from tandem.runtime import speech
from tandem.v1 import edge_pb2, edge_pb2_grpc
from tandem.wire import check_request_id, finish_to_proto

log = logging.getLogger(__name__)

MAX_DEADLINE_MS = 10 * 60 * 1000
FIRST_MESSAGE_S = 1.0
"""A local app's request crosses a socket in microseconds; a call silent this long after its
headers is cancelled (20 such calls once starved the agent)."""
MAX_WAITING_CALLS = 64
"""Calls accepted but still waiting for their request message; one more is refused."""
MIN_REQUEST_BYTES = 4 * 1024 * 1024
"""The receive limit is never below gRPC's default, so a text well over ``max_text_chars``
(1 MB, say) still reaches the agent and gets its INVALID_ARGUMENT, not a transport error."""


def max_request_bytes(max_text_chars: int, max_audio_bytes: int = 0) -> int:
    """Largest GenerateRequest the transport accepts (UTF-8 is at most 4 bytes a character; a
    WAV over ``max_audio_bytes`` but within 64 KiB of it still gets its INVALID_ARGUMENT)."""
    return max(MIN_REQUEST_BYTES, 4 * max_text_chars + 1024, max_audio_bytes + 64 * 1024)


class EdgeServicer(edge_pb2_grpc.EdgeServicer):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def Generate(self, request: edge_pb2.GenerateRequest, context: grpc.ServicerContext):
        try:
            req = self._validate(request, context)
            stream = self.agent.generate(req)
            text_so_far = ""
            ids: list[int] = []
            runs: list[str] = []  # audio: each decoding run's text (one piece per run)
            pending: list[int] = []
            pending_start = 0
            last_sent = time.monotonic()
            interval_s = self.agent.config.piece_interval_ms / 1000.0

            def flush():
                nonlocal text_so_far, pending, last_sent
                if req.audio is None:
                    text = self.agent.model.detokenize(ids) or ""
                else:  # as Transcription.text: the runs' texts, stripped, joined by a space
                    text = " ".join(runs)
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
                if req.audio is not None:
                    run_text = (self.agent.model.detokenize(list(item.ids)) or "").strip()
                    if run_text:
                        runs.append(run_text)
                # Coalesce tokens that come faster than the app could show them: one message
                # per interval instead of one per token (a gRPC message costs ~0.2 ms).
                if time.monotonic() - last_sent >= interval_s:
                    yield flush()
        except TandemError as exc:  # statuses from the one table both services use
            code = status_code(exc, otherwise=grpc.StatusCode.UNAVAILABLE)
            if code is not grpc.StatusCode.INVALID_ARGUMENT:
                log.warning("request failed", extra={"error": str(exc), "code": code.name})
            context.abort(code, str(exc))

    def _validate(self, request: edge_pb2.GenerateRequest | Undecodable, context) -> Request:
        if isinstance(request, Undecodable):
            raise InputError(request.describe())
        model = self.agent.model
        audio = request.audio if request.HasField("audio") else None
        if audio is None and model.is_speech:
            raise InputError(f"text: bundle {model.manifest.name!r} is a speech model; send audio")
        if audio is not None and not model.is_speech:
            raise InputError(f"audio: bundle {model.manifest.name!r} is a text model; send text")
        if audio is None and not request.text.strip():
            raise InputError("text: must not be empty")
        if request.request_id:  # empty: the agent assigns one
            check_request_id(request.request_id)  # the cloud's rule: it is forwarded there
        languages = model.manifest.languages
        target = request.target_language or None
        language = None
        if audio is not None:
            language = _check_audio(request, audio, model)
        elif target is not None:
            model.manifest.language_token(target, "target_language")
        if (
            audio is None
            and languages
            and target is None
            and model.manifest.default_forced_first_token is None
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
            audio=audio.wav if audio is not None else None,
            language=language,
        )


def _check_audio(
    request: edge_pb2.GenerateRequest, audio: edge_pb2.AudioInput, model
) -> str | None:
    """The spoken language of an audio request, after the checks that need no decoding (the
    WAV itself is read, and refused, by the agent: ``edge/audio_request.py``)."""
    if request.text:
        raise InputError("text and audio: set one, not both")
    if request.target_language:
        raise InputError("target_language: must be empty with audio (use audio.language)")
    if not audio.wav:
        raise InputError("audio.wav: must not be empty")
    if not audio.language:
        return None
    try:
        speech.language_token(model.manifest, audio.language)
    except InputError as exc:
        raise InputError(f"audio.language: {exc}") from None
    return audio.language


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


def check_socket_dir(directory: Path) -> None:
    """ConfigError unless ``directory`` is a real directory of this user that nobody else can
    write to.

    Why: whoever can write to the directory can unlink the agent's socket and bind their own in
    its place, and every app then talks to them (the review did exactly that with a
    pre-created world-writable ``/tmp/tandem-<uid>``). The permissions of the socket file
    protect nothing if its directory is not ours.
    """
    try:
        st = os.lstat(directory)
    except OSError as exc:
        raise ConfigError(
            f"socket directory {directory}: cannot inspect it: {exc.strerror or exc}"
        ) from exc
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(
            f"socket directory {directory} is a symbolic link; refusing to serve in it "
            "(point socket: at a directory owned by this user)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"socket directory {directory} is not a directory")
    uid = os.getuid()
    if st.st_uid != uid:
        raise ConfigError(
            f"socket directory {directory} is owned by uid {st.st_uid}, not by this agent's "
            f"uid {uid}; refusing to serve in it (another user could replace the socket)"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"socket directory {directory} has mode {stat.S_IMODE(st.st_mode):#o}, writable by "
            f"group or others; refusing to serve in it (chmod 700 {directory}, or remove it)"
        )


def prepare_socket(path: str) -> Path:
    """Create the socket's directory (0700), check it is safe, and clear a stale socket file."""
    sock = Path(path)
    try:
        sock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(
            f"socket directory {sock.parent}: cannot create it: {exc.strerror or exc}"
        ) from exc
    check_socket_dir(sock.parent)
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


def create_edge_server(agent: Agent, max_workers: int = 2) -> tuple[grpc.Server, dict]:
    """Build and start the local API server; returns (server, {"socket": path, "tcp_port": p}).

    Generate calls are admitted as ``tandem.admission`` does for the cloud: at most
    ``max_concurrent`` run, one more is RESOURCE_EXHAUSTED at once (edge.proto), and calls that
    never send their request wait on threads of their own for at most ``FIRST_MESSAGE_S``, so
    they cannot starve complete ones. ``max_workers`` only serves what no lane claims.
    """
    config = agent.config
    admission = Admission(
        (
            Lane(
                "generate",
                max_running=config.max_concurrent,
                max_waiting=MAX_WAITING_CALLS,
                first_message_s=FIRST_MESSAGE_S,
                authenticate=False,  # the socket's permissions are the access control
            ),
        ),
        lambda method: "generate",
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="edge"),
        interceptors=(admission,),
        options=[
            (
                "grpc.max_receive_message_length",
                max_request_bytes(config.max_text_chars, config.max_audio_bytes),
            ),
            # No per-connection stream limit: apps share one connection per socket, and a
            # stream over the limit on a new connection is reset (UNAVAILABLE), not refused
            # with the RESOURCE_EXHAUSTED edge.proto promises. Admission bounds the work.
        ],
        maximum_concurrent_rpcs=admission.threads + MAX_WAITING_CALLS,
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
