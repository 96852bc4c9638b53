"""The local API as apps use it: gRPC over a Unix socket, the Python client, bad requests."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import grpc
import pytest

from tandem.edge.client import EdgeClient
from tandem.edge.server import create_edge_server, prepare_socket
from tandem.errors import ConfigError, InputError
from tandem.v1 import edge_pb2, edge_pb2_grpc


@pytest.fixture
def served(agent_factory):
    agent = agent_factory(None, policy="always_local")
    server, where = create_edge_server(agent)
    yield agent, where
    server.stop(None)


def test_socket_is_owner_only_and_answers(served):
    agent, where = served
    mode = os.stat(where["socket"]).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    with EdgeClient(where["socket"]) as client:
        answer = client.ask("w10 w11 w12", target="fr")
    assert answer.route == "local" and answer.reason == "offline"
    assert answer.ids[0] == agent.model.manifest.languages["fr"]
    assert answer.text == agent.model.detokenize(answer.ids)
    assert answer.finish in ("eos", "length")


def test_pieces_stream_before_the_final_event(served):
    _, where = served
    with EdgeClient(where["socket"]) as client:
        events = list(client.stream("w40 w41", target="en"))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "final" and kinds.count("final") == 1 and kinds.count("piece") >= 1
    pieces = [e.piece for e in events[:-1]]
    assert [t for p in pieces for t in p.ids] == list(events[-1].final.ids)
    assert "".join(p.text for p in pieces) == events[-1].final.text


@pytest.mark.parametrize(
    "request_fields, message",
    [
        ({"text": "", "target_language": "fr"}, "text: must not be empty"),
        ({"text": "   ", "target_language": "fr"}, "text: must not be empty"),
        ({"text": "w5", "target_language": "xx"}, "target_language: unknown target language 'xx'"),
        ({"text": "w5"}, "target_language: required"),
        ({"text": "w5", "target_language": "fr", "max_new_tokens": 10_000}, "max_new_tokens"),
        ({"text": "w5 " * 200, "target_language": "fr"}, "at most 64"),
        ({"text": "x" * 5000, "target_language": "fr"}, "limit is 4096"),
        # Forwarded to the cloud as is, so refused here: a bad id is the app's error, not a
        # cloud failure counting against the breaker (found by tests/edge/test_fuzz.py).
        ({"text": "w5", "target_language": "fr", "request_id": "r" * 129}, "at most 128"),
        ({"text": "w5", "target_language": "fr", "request_id": "a\nb"}, "control characters"),
    ],
)
def test_bad_requests_are_invalid_argument(served, request_fields, message):
    _, where = served
    with grpc.insecure_channel(f"unix:{where['socket']}") as channel:
        stub = edge_pb2_grpc.EdgeStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Generate(edge_pb2.GenerateRequest(**request_fields), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    with EdgeClient(where["socket"]) as client, pytest.raises(InputError, match="must not be"):
        client.ask("", target="fr")


def test_stale_socket_is_replaced_but_a_live_one_is_not(tmp_path):
    path = tmp_path / "s" / "edge.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed agent's leftover
    assert prepare_socket(str(path)) == path and not path.exists()
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen()
    try:
        with pytest.raises(ConfigError, match="in use by another process"):
            prepare_socket(str(path))
    finally:
        live.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        prepare_socket(str(path))


def test_ask_command_talks_to_the_agent(served):
    agent, where = served
    out = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "ask", "w10 w11 w12", "--target", "fr",
         "--agent", where["socket"]],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()
    expected = agent.model.generate("w10 w11 w12", target="fr").text
    assert out.stdout.decode().strip() == expected.strip()
    assert "[local (offline)" in out.stderr.decode()


def test_edge_run_daemon_answers_and_exits_0_on_sigterm(tmp_path, text_bundle):
    import signal
    import time

    sock = tmp_path / "daemon.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem.cli", "edge", "run", "--bundle", str(text_bundle),
         "--socket", str(sock), "--cloud", "127.0.0.1:1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with EdgeClient(str(sock)) as client:
            answer = client.ask("w10 w11 w12", target="fr")
        assert answer.route == "local" and answer.ids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        out, err = proc.communicate()
        assert b"draining" in out
        assert b"request_id=" in err  # structured log fields are visible
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722, 0o1777])
def test_a_directory_others_can_write_is_refused(tmp_path, mode):
    """A pre-created group- or world-writable socket directory (sticky or not) is refused with
    one line, and the hostile socket planted in it is left alone (it is not ours)."""
    hostile = tmp_path / "tandem-dir"
    hostile.mkdir()
    os.chmod(hostile, mode)
    with pytest.raises(ConfigError, match=r"writable by group or others") as info:
        prepare_socket(str(hostile / "edge.sock"))
    assert "\n" not in str(info.value)


def test_a_directory_of_another_user_or_a_symlink_is_refused(tmp_path, monkeypatch):
    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(own)
    with pytest.raises(ConfigError, match="symbolic link"):
        prepare_socket(str(link / "edge.sock"))
    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)
    with pytest.raises(ConfigError, match=f"owned by uid {real_uid}"):
        prepare_socket(str(own / "edge.sock"))


def test_a_missing_directory_is_created_owner_only(tmp_path):
    sock = prepare_socket(str(tmp_path / "a" / "b" / "edge.sock"))
    assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700


def test_default_socket_prefers_the_runtime_dir(monkeypatch, tmp_path):
    from tandem.edge.config import default_socket_path

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_socket_path() == str(tmp_path / "tandem" / "edge.sock")


def test_edge_run_refuses_a_hostile_socket_directory_with_one_line(tmp_path):
    hostile = tmp_path / "planted"
    hostile.mkdir()
    os.chmod(hostile, 0o777)
    out = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "edge", "run", "--socket", str(hostile / "edge.sock"),
         "--cloud", "127.0.0.1:1"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "writable by group or others" in lines[0], lines
    assert not (hostile / "edge.sock").exists()
