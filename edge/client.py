"""``EdgeClient``: how an app talks to the agent on its device.

from tandem import EdgeClient
with EdgeClient() as client:                 # default socket of this user
    answer = client.ask("1984 42", target="fr")
    print(answer.text, answer.route)
    # an agent of a speech model: client.transcribe(Path("speech.wav").read_bytes(), "en")
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from tandem.edge.config import default_socket_path
from tandem.errors import CloudUnavailable, InputError, Overloaded, TandemError
from tandem.v1 import edge_pb2, edge_pb2_grpc
from tandem.wire import finish_from_proto


@dataclass(frozen=True)
class Answer:
    text: str
    ids: list[int]
    route: str
    reason: str
    fallbacks: list[str] = field(default_factory=list)
    encode_ms: float = 0.0
    upload_ms: float = 0.0
    first_token_ms: float = 0.0
    total_ms: float = 0.0
    finish: str = ""


class EdgeClient:
    def __init__(self, target: str | None = None, timeout_s: float = 60.0) -> None:
        """``target``: ``unix:/path``, a socket path, or ``host:port`` (default: the socket)."""
        target = target or default_socket_path()
        if target.startswith("/"):
            target = f"unix:{target}"
        self._channel = grpc.insecure_channel(target)
        self._stub = edge_pb2_grpc.EdgeStub(self._channel)
        self._timeout_s = timeout_s

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def stream(
        self,
        text: str,
        target: str | None = None,
        max_new_tokens: int = 0,
        local_only: bool = False,
        request_id: str = "",
        audio: bytes | None = None,
        language: str | None = None,
    ) -> Iterator[edge_pb2.GenerateEvent]:
        """Events as they come: text pieces, then the final event.

        ``audio``: a WAV file's bytes to transcribe instead of ``text`` (a speech model's
        agent), ``language`` its spoken language (None: detected)."""
        request = edge_pb2.GenerateRequest(
            request_id=request_id,
            text=text,
            target_language=target or "",
            max_new_tokens=max_new_tokens,
            local_only=local_only,
            deadline_ms=int(self._timeout_s * 1000),
        )
        if audio is not None:
            request.audio.CopyFrom(edge_pb2.AudioInput(wav=audio, language=language or ""))
        try:
            yield from self._stub.Generate(request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InputError(exc.details()) from exc
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # busy: max_concurrent
                raise Overloaded(f"edge agent busy: {exc.details()}", _retry_after_s(exc)) from exc
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise CloudUnavailable(f"edge agent unavailable: {exc.details()}") from exc
            raise TandemError(f"edge agent failed: {exc.code().name}: {exc.details()}") from exc

    def transcribe(self, wav: bytes, language: str | None = None, **kwargs) -> Answer:
        """The transcript of a WAV file's bytes (the agent serves a speech model)."""
        return self.ask("", audio=wav, language=language, **kwargs)

    def ask(self, text: str, target: str | None = None, **kwargs) -> Answer:
        for event in self.stream(text, target, **kwargs):
            if event.WhichOneof("event") == "final":
                f = event.final
                return Answer(
                    text=f.text, ids=list(f.ids), route=f.route, reason=f.reason,
                    fallbacks=list(f.fallbacks), encode_ms=f.encode_ms, upload_ms=f.upload_ms,
                    first_token_ms=f.first_token_ms, total_ms=f.total_ms,
                    finish=finish_from_proto(f.finish_reason),
                )  # fmt: skip
        raise TandemError("edge agent closed the stream without a final event")


def _retry_after_s(exc: grpc.RpcError) -> float:
    """The agent's ``retry-after-ms`` hint, or 0.1 s."""
    try:
        for key, value in exc.trailing_metadata() or ():
            if key == "retry-after-ms":
                return float(value) / 1000.0
    except (TypeError, ValueError):
        pass
    return 0.1
