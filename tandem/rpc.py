"""Service registration whose request parsing never ends as INTERNAL, and the one error ->
status table of both services.

gRPC Python parses a request before any handler runs; bytes that are not a valid message (a
truncated frame, a bad varint, invalid UTF-8 in a string field) make the library answer
``INTERNAL: Exception deserializing request!`` — a status that says "the server is broken"
for what is the caller's fault, and one the cloud's clients are told may be retried. Found by
fuzzing both services with raw bytes (``tests/cloud/test_properties.py``,
``tests/edge/test_fuzz.py``).

``add_service`` registers a servicer through its generated ``add_*Servicer_to_server``
function, but with a parser that turns undecodable bytes into an ``Undecodable`` value instead
of raising. Handlers check for it first and answer INVALID_ARGUMENT through ``STATUS_CODES``.

``STATUS_CODES`` is the only place an error of ``tandem.errors`` becomes a gRPC status: the
cloud decoder (``tandem.cloud.servicer``) and the edge agent's local API (``tandem.edge.server``)
both answer through ``status_code``, so one error reads the same on either service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from tandem.errors import (
    CloudError,
    CodecError,
    FingerprintMismatch,
    InputError,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
)

log = logging.getLogger(__name__)


STATUS_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (CodecError, grpc.StatusCode.INVALID_ARGUMENT),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (FingerprintMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (CloudError, grpc.StatusCode.UNAVAILABLE),
)
"""Error -> status, first match wins (``FingerprintMismatch`` before anything it derives from).
Anything else is ``status_code``'s ``otherwise``: INTERNAL on the cloud (a ``ModelFailure``, a
bug), whose message then names the request and the replica, never the exception text."""


def status_code(
    exc: BaseException, otherwise: grpc.StatusCode = grpc.StatusCode.INTERNAL
) -> grpc.StatusCode:
    """The status a client sees for ``exc``: the first match in ``STATUS_CODES``."""
    for kind, code in STATUS_CODES:
        if isinstance(exc, kind):
            return code
    return otherwise


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes do not parse as ``message_type``."""

    message_type: str
    error: str

    def describe(self) -> str:
        return f"request is not a valid {self.message_type} message ({self.error})"


def _parser(message_class: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> Message | Undecodable:
        try:
            return message_class.FromString(data)
        except (DecodeError, ValueError, TypeError) as exc:  # upb raises DecodeError
            return Undecodable(name, str(exc) or type(exc).__name__)

    return parse


class _Capture:
    """Stands in for the server while a generated registration function runs."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # rebuilt from the registered handlers below

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, dict(handlers)


def add_service(
    server: grpc.Server,
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    messages: dict[str, type[Message]],
) -> None:
    """``add_to_server(servicer, server)``, with ``messages[method]`` parsed leniently.

    ``messages`` maps each method name to its request message class; a handler of those
    methods receives either the parsed message or an ``Undecodable``.
    """
    capture = _Capture()
    add_to_server(servicer, capture)
    handlers = {}
    for method, handler in capture.handlers.items():
        if method in messages:
            handler = handler._replace(request_deserializer=_parser(messages[method]))
        handlers[method] = handler
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(capture.service, handlers),)
    )
    server.add_registered_method_handlers(capture.service, handlers)


__all__ = ["STATUS_CODES", "Undecodable", "add_service", "status_code"]
