"""Bearer tokens, TLS and mTLS against a real server; health needs no credentials."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import pytest
from cloud_helpers import collect, request, rpc_error, stub
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.v1 import decoder_pb2, decoder_pb2_grpc

TOKEN_A = "tok-a-0123456789abcdef"
TOKEN_B = "tok-b-0123456789abcdef"


def _bearer(token):
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
def token_server(serve, model, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"phone-a: {TOKEN_A}\nphone-b:\n  token: {TOKEN_B}\n  models: ['sha256:{'1' * 64}']\n",
        encoding="utf-8",
    )
    return serve(
        auth={"tokens_file": str(tokens), "tokens_env": "CLOUD_TOKENS"},
        environ={"CLOUD_TOKENS": "phone-c=tok-c-0123456789abcdef"},
    )


def test_tokens(token_server, model):
    client = stub(token_server)
    req = lambda: request(model, [5, 6, 1], max_new_tokens=3)  # noqa: E731
    exc = rpc_error(lambda: client.Decode(req(), timeout=5))
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED and "authorization" in exc.details()
    exc = rpc_error(lambda: client.Decode(req(), timeout=5, metadata=_bearer("nope" * 5)))
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED and "unknown bearer token" in exc.details()
    exc = rpc_error(lambda: client.Decode(req(), timeout=5, metadata=[("authorization", TOKEN_A)]))
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    collect(client, req(), metadata=_bearer(TOKEN_A))
    collect(client, req(), metadata=_bearer("tok-c-0123456789abcdef"))  # from the environment
    # phone-b may only use another model: known, but not allowed.
    exc = rpc_error(lambda: client.Decode(req(), timeout=5, metadata=_bearer(TOKEN_B)))
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED and "phone-b" in exc.details()
    listing = client.ListModels(
        decoder_pb2.ListModelsRequest(), timeout=5, metadata=_bearer(TOKEN_B)
    )
    assert list(listing.models) == []
    exc = rpc_error(lambda: client.ListModels(decoder_pb2.ListModelsRequest(), timeout=5))
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    # Probes carry no token: health answers anyway.
    channel = grpc.insecure_channel(f"127.0.0.1:{token_server.port}")
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key):
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("tandem test CA"))
        .issuer_name(name("tandem test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), pem_key(key)

    files = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
    cert, key = leaf(
        "localhost", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    files.update({"server.pem": cert, "server.key": key})
    cert, key = leaf("phone-7")
    files.update({"client.pem": cert, "client.key": key})
    for file, data in files.items():
        (out / file).write_bytes(data)
    return out


def _tls_stub(server, pki, client_cert=False):
    creds = grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(),
        (pki / "client.key").read_bytes() if client_cert else None,
        (pki / "client.pem").read_bytes() if client_cert else None,
    )
    channel = grpc.secure_channel(f"localhost:{server.port}", creds)
    return decoder_pb2_grpc.DecoderStub(channel)


def test_tls_with_tokens(serve, model, pki):
    server = serve(
        tls={"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key")},
        auth={"tokens_env": "T"},
        environ={"T": f"phone-a={TOKEN_A}"},
    )
    ids, final = collect(
        _tls_stub(server, pki), request(model, [5, 1], max_new_tokens=3), metadata=_bearer(TOKEN_A)
    )
    assert final.token_count == len(ids)
    # A plaintext client cannot even start the handshake.
    exc = rpc_error(lambda: stub(server).Decode(request(model, [5, 1]), timeout=3))
    assert exc.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(serve, model, pki):
    server = serve(
        tls={
            "cert_file": str(pki / "server.pem"),
            "key_file": str(pki / "server.key"),
            "client_ca_file": str(pki / "ca.pem"),
        },
        limits={"max_streams_per_client": 1},
    )
    collect(_tls_stub(server, pki, client_cert=True), request(model, [5, 1], max_new_tokens=3))
    exc = rpc_error(lambda: _tls_stub(server, pki).Decode(request(model, [5, 1]), timeout=3))
    assert exc.code() == grpc.StatusCode.UNAVAILABLE  # handshake refused: no client certificate
