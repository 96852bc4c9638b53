"""Health, reflection, metrics, cancellation and draining of a real replica."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
from cloud_helpers import collect, request, rpc_error, stub
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tandem.v1 import decoder_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(port, service=""):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return reply.status


def _long(model, n=1000):
    return request(model, [5, 6, 7, 1], max_new_tokens=n, min_new_tokens=n)


def _wait_for(condition, timeout_s=5.0):
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def test_health_reflection_and_metrics(serve, model):
    server = serve(metrics_listen="127.0.0.1:0", health_listen="127.0.0.1:0")
    assert _health(server.port) == SERVING
    assert _health(server.port, "tandem.v1.Decoder") == SERVING
    assert _health(server.health_port) == SERVING
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"tandem.v1.Decoder", "grpc.health.v1.Health"} <= names

    collect(stub(server), request(model, [5, 6, 1], max_new_tokens=5, min_new_tokens=5))
    bad = request(model, [5, 1])
    bad.request_id = ""
    rpc_error(lambda: stub(server).Decode(bad, timeout=5))
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    name = model.manifest.name
    assert 'tandem_cloud_requests_total{code="OK",method="Decode"} 1.0' in text
    assert 'tandem_cloud_request_errors_total{code="INVALID_ARGUMENT",method="Decode"} 1.0' in text
    assert f'tandem_cloud_tokens_total{{model="{name}"}} 5.0' in text
    for metric in (
        "tandem_cloud_batch_size_bucket",
        "tandem_cloud_queue_seconds_bucket",
        "tandem_cloud_active_sequences",
        "tandem_cloud_step_seconds_bucket",
    ):
        assert metric in text
    # Every stage timer saw the one served request (engine stages: each of its iterations).
    for stage in ("validate", "codec", "queue", "join", "step", "emit", "send"):
        count = server.metrics.registry.get_sample_value(
            "tandem_cloud_stage_seconds_count", {"model": name, "stage": stage}
        )
        assert count and count >= 1, stage


def test_cancel_frees_the_slot_at_the_next_step(serve, long_model):
    server = serve(models=[long_model], scheduler={"max_batch": 1, "max_queue": 4})
    engine = server.engines[long_model.fingerprint]
    client = stub(server)
    first = client.Decode(_long(long_model), timeout=30)
    next(first)
    second = client.Decode(_long(long_model, 5), timeout=30)
    _wait_for(lambda: engine.load == (1, 1))  # one decoding, one waiting for the only slot
    first.cancel()
    events = list(second)  # it gets the slot long before the first would have finished
    assert events[-1].final.reason == decoder_pb2.FINISH_REASON_LENGTH
    assert events[-1].final.queue_ms < 1000
    _wait_for(lambda: engine.load == (0, 0))
    tokens = server.metrics.registry.get_sample_value(
        "tandem_cloud_tokens_total", {"model": long_model.manifest.name}
    )
    assert tokens < 1000 + 5, "the cancelled sequence stopped early"


def test_drain_cancels_streams_that_outlast_the_grace_period(serve, long_model):
    server = serve(models=[long_model])
    calls = [stub(server).Decode(_long(long_model), timeout=30) for _ in range(4)]
    for call in calls:
        next(call)
    started = time.monotonic()
    drainer = threading.Thread(target=server.drain, args=(0.2,))
    drainer.start()
    for call in calls:
        final = list(call)[-1].final  # a clean end, with tokens the client may resume from
        assert final.reason == decoder_pb2.FINISH_REASON_CANCELLED
        assert final.token_count < 1000
    drainer.join(5)
    assert time.monotonic() - started < 2


def test_sigterm_finishes_in_flight_streams_then_exits_0(long_bundle, long_model, tmp_path):
    config = tmp_path / "cloud.yaml"
    config.write_text("grace_period_s: 20\nhealth_listen: 127.0.0.1:0\n", encoding="utf-8")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tandem.cli",
            "cloud",
            "serve",
            "--config",
            str(config),
            "--bundle",
            str(long_bundle),
            "--listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+) \(.*health 127\.0\.0\.1:(\d+)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        port, health_port = int(match[1]), int(match[2])
        client = stub(f"127.0.0.1:{port}")
        # Eight streams of 1000 tokens: long enough to watch the drain from outside.
        calls = [client.Decode(_long(long_model), timeout=30) for _ in range(8)]
        for call in calls:
            next(call)
        proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: _health(health_port) == NOT_SERVING)
        refused = rpc_error(lambda: client.Decode(_long(long_model, 3), timeout=5))
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        for call in calls:
            final = list(call)[-1].final  # in-flight streams run to their end
            assert (final.reason, final.token_count) == (decoder_pb2.FINISH_REASON_LENGTH, 1000)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_with_an_open_watch_and_a_silent_call_exits_within_grace(long_bundle, tmp_path):
    """One open Health.Watch once made every shutdown wait the whole grace period; the drain
    now ends Watch streams, and the process exits within grace + 1 s whatever is open."""
    grace_s = 5.0
    config = tmp_path / "cloud.yaml"
    config.write_text(
        f"grace_period_s: {grace_s}\nhealth_listen: 127.0.0.1:0\n"
        "limits:\n  first_message_timeout_s: 60\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem.cli", "cloud", "serve", "--config", str(config),
         "--bundle", str(long_bundle), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    gate = threading.Event()
    try:
        line = proc.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+) \(.*health 127\.0\.0\.1:(\d+)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        port, health_port = int(match[1]), int(match[2])
        watches = []
        for p in (port, health_port):
            channel = grpc.insecure_channel(f"127.0.0.1:{p}")
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=60
            )
            assert next(watch).status == SERVING
            watches.append(watch)

        def silence():
            gate.wait()
            yield from ()

        silent = grpc.insecure_channel(f"127.0.0.1:{port}").stream_stream(
            "/tandem.v1.Decoder/Decode", request_serializer=bytes, response_deserializer=bytes
        )(silence(), timeout=60)
        time.sleep(0.2)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for watch in watches:  # each watcher sees NOT_SERVING, then its stream ends
            statuses = [reply.status for reply in watch]
            assert statuses[-1] == NOT_SERVING
        assert proc.wait(grace_s + 5) == 0
        elapsed = time.monotonic() - started
        assert elapsed < grace_s + 1.0, elapsed
        assert silent.code() is not None
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_with_only_an_open_watch_does_not_wait_for_the_grace_period(long_bundle, tmp_path):
    grace_s = 5.0
    config = tmp_path / "cloud.yaml"
    config.write_text(f"grace_period_s: {grace_s}\n", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem.cli", "cloud", "serve", "--config", str(config),
         "--bundle", str(long_bundle), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        channel = grpc.insecure_channel(f"127.0.0.1:{match[1]}")
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=60
        )
        assert next(watch).status == SERVING
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(grace_s + 5) == 0
        elapsed = time.monotonic() - started
        assert elapsed < grace_s / 2, elapsed  # was the whole grace period (5.1 s of 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
