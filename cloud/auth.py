"""Caller authentication: bearer tokens per device, TLS client identities, who a client is.

A device sends ``authorization: Bearer <token>`` metadata; the token table maps each token to
a device id (and optionally the model fingerprints that device may use). Tokens are stored and
compared as SHA-256 digests with ``hmac.compare_digest`` against every entry, so neither the
comparison time nor an early exit tells an attacker how close a guess was.

Pure apart from ``load_tokens``, which reads the token file and the environment once at start:
``Authenticator.authenticate`` takes the call's metadata and transport identity as values, so
it is tested without a server. Failures raise ``Unauthenticated`` (who are you?) or
``PermissionDenied`` (you may not do this); ``tandem.cloud.servicer`` maps them to
UNAUTHENTICATED and PERMISSION_DENIED.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.cloud.config import AuthConfig
from tandem.config import shown
from tandem.errors import ConfigError, TandemError
from tandem.yamlfile import read_yaml

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
"""Shorter tokens are refused when loaded: a guessable token is no authentication."""

_DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_BEARER = "bearer "


class Unauthenticated(TandemError):
    """The call carries no credentials, or credentials this replica does not know."""


class PermissionDenied(TandemError):
    """The caller is known but may not use what it asked for (a model outside its list)."""


@dataclass(frozen=True)
class DeviceToken:
    """One device's credential as stored: the digest, never the token itself."""

    device_id: str
    digest: bytes
    models: frozenset[str] | None = None
    """Fingerprints this device may decode with; None means every served model."""


@dataclass(frozen=True)
class Principal:
    """Who is calling, as far as this replica can tell."""

    client: str
    """Key of the per-client concurrency limit and of logs: ``device:<id>``, ``tls:<name>``
    or ``peer:<ip>``."""
    device_id: str | None = None
    models: frozenset[str] | None = None

    def check_model(self, fingerprint: str) -> None:
        """PermissionDenied unless this caller may use the model with ``fingerprint``."""
        if self.models is not None and fingerprint not in self.models:
            raise PermissionDenied(
                f"device {self.device_id!r} may not use model {fingerprint}; its token allows "
                f"{len(self.models)} other model(s)"
            )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_tokens(data: Any, where: str) -> list[DeviceToken]:
    """A token file's mapping -> entries. ``id: token`` or ``id: {token: ..., models: [...]}``."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: must be a non-empty mapping of device id -> token")
    entries = []
    for device_id, value in data.items():
        models = None
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"token", "models"})
            if unknown:
                raise ConfigError(f"{where}: {device_id}: unknown key(s) {unknown}")
            if "models" in value:
                listed = value["models"]
                if not isinstance(listed, list) or not all(
                    isinstance(m, str) and m for m in listed
                ):
                    raise ConfigError(f"{where}: {device_id}.models must be a list of fingerprints")
                models = frozenset(listed)
            value = value.get("token")
        entries.append(_entry(device_id, value, models, where))
    return _unique(entries, where)


def parse_tokens_env(text: str, name: str) -> list[DeviceToken]:
    """``id=token`` entries separated by commas or newlines (blank entries ignored)."""
    entries = []
    for part in re.split(r"[,\n]", text):
        part = part.strip()
        if not part:
            continue
        device_id, sep, token = part.partition("=")
        if not sep:
            raise ConfigError(
                f"environment variable {name}: entries must be 'device_id=token' separated "
                "by commas or newlines"
            )
        entries.append(
            _entry(device_id.strip(), token.strip(), None, f"environment variable {name}")
        )
    if not entries:
        raise ConfigError(f"environment variable {name} holds no 'device_id=token' entries")
    return _unique(entries, f"environment variable {name}")


def _entry(device_id: Any, token: Any, models: frozenset[str] | None, where: str) -> DeviceToken:
    if not isinstance(device_id, str) or not _DEVICE_RE.match(device_id):
        raise ConfigError(
            f"{where}: device id {shown(device_id)} must be 1-128 characters of letters, digits "
            "and ._:@-"
        )
    if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS or token != token.strip():
        # The token itself is never echoed: error messages end up in logs.
        raise ConfigError(
            f"{where}: the token of device {device_id!r} must be a string of at least "
            f"{MIN_TOKEN_CHARS} characters without surrounding spaces"
        )
    return DeviceToken(device_id, _digest(token), models)


def _unique(entries: list[DeviceToken], where: str) -> list[DeviceToken]:
    seen_ids: set[str] = set()
    seen_digests: set[bytes] = set()
    for entry in entries:
        if entry.device_id in seen_ids:
            raise ConfigError(f"{where}: device id {entry.device_id!r} appears twice")
        if entry.digest in seen_digests:
            raise ConfigError(f"{where}: device {entry.device_id!r} shares a token with another")
        seen_ids.add(entry.device_id)
        seen_digests.add(entry.digest)
    return entries


def load_tokens(config: AuthConfig, environ: Mapping[str, str]) -> list[DeviceToken]:
    """Read the token file and the token variable named by ``config`` (both if both are set)."""
    entries: list[DeviceToken] = []
    if config.tokens_file is not None:
        path = Path(config.tokens_file)
        where = f"auth.tokens_file {path}"
        entries += parse_tokens(read_yaml(path, "auth.tokens_file"), where)
    if config.tokens_env is not None:
        text = environ.get(config.tokens_env)
        if not text:
            raise ConfigError(
                f"auth.tokens_env: environment variable {config.tokens_env} is unset or empty"
            )
        entries += parse_tokens_env(text, config.tokens_env)
    return _unique(entries, "auth tokens (file and environment together)")


class Authenticator:
    """Turns a call's metadata and transport identity into a ``Principal``, or refuses it."""

    def __init__(self, tokens: Iterable[DeviceToken], require_token: bool) -> None:
        self._tokens = list(tokens)
        self._require_token = require_token

    def authenticate(
        self,
        metadata: Iterable[tuple[str, str | bytes]],
        tls_identity: str | None,
        peer: str,
    ) -> Principal:
        """The caller of one RPC.

        ``tls_identity`` is the verified client certificate's name under mTLS (None without);
        ``peer`` is gRPC's peer string (``ipv4:1.2.3.4:5678``). Without tokens configured the
        caller is named by its certificate or its IP, for the per-client limit.
        """
        if not self._require_token:
            if tls_identity:
                return Principal(client=f"tls:{tls_identity}")
            return Principal(client=f"peer:{peer_host(peer)}")
        values = [v for k, v in metadata if k == "authorization"]
        if not values:
            raise Unauthenticated(
                "missing 'authorization' metadata; send 'authorization: Bearer <device token>'"
            )
        if len(values) > 1:
            raise Unauthenticated("more than one 'authorization' metadata entry")
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not value[: len(_BEARER)].lower() == _BEARER:
            raise Unauthenticated("'authorization' metadata must be 'Bearer <device token>'")
        digest = _digest(value[len(_BEARER) :].strip())
        match = None
        for entry in self._tokens:  # no early exit: the time spent says nothing about the token
            if hmac.compare_digest(entry.digest, digest):
                match = entry
        if match is None:
            raise Unauthenticated("unknown bearer token")
        return Principal(
            client=f"device:{match.device_id}", device_id=match.device_id, models=match.models
        )


def peer_host(peer: str) -> str:
    """``ipv4:1.2.3.4:5678`` -> ``1.2.3.4``; ``ipv6:[::1]:5678`` -> ``::1``; else as given."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].partition("]")[0]
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


def tls_identity(auth_context: Mapping[str, list[bytes]]) -> str | None:
    """The verified client certificate's common name (or first SAN) from gRPC's auth context."""
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        names = auth_context.get(key)
        if names:
            return names[0].decode("utf-8", "replace")
    return None
