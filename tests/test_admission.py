"""tandem.admission on a real server on 127.0.0.1: every way a call ends gives its place back.

The accounting is the part that must never drift: a place that leaks is capacity lost until
restart, which is the denial of service the module exists to stop.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tandem.admission import Admission, Lane, Watchdog
from tandem.errors import Unauthenticated

release = threading.Event()


def _echo(request, context):
    return request


def _three(request, context):
    yield from (request, request, request)


def _hold(request, context):
    yield request
    release.wait(10)
    yield request


def _wait_for(condition, timeout_s=5.0):
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def server():
    """A server with an ``echo`` (unary) and a ``hold`` (stream) method in one lane of 2
    running and 3 waiting calls, a 0.5 s first-message deadline, and health in a lane of its
    own; metadata ``key: bad`` is refused as unauthenticated."""
    release.clear()

    def check(metadata):
        if ("key", "bad") in list(metadata):
            raise Unauthenticated("bad key")

    admission = Admission(
        (
            Lane("work", max_running=2, max_waiting=3, first_message_s=0.5),
            Lane("health", 4, 4, 0.5, authenticate=False),
        ),
        lambda method: "health" if "Health" in method else "work",
        check=check,
    )
    srv = grpc.server(futures.ThreadPoolExecutor(2), interceptors=(admission,))
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "Hold": grpc.unary_stream_rpc_method_handler(_hold),
        "Three": grpc.unary_stream_rpc_method_handler(_three),
    }
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
    watch_health = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(1),
    )
    health_pb2_grpc.add_HealthServicer_to_server(watch_health, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield admission, channel, port
    release.set()
    channel.close()
    srv.stop(None)


def _silent(channel, method="/t.T/Hold", timeout=30):
    gate = threading.Event()

    def silence():
        gate.wait()
        yield from ()

    call = channel.stream_stream(method)(silence(), timeout=timeout)
    call.gate = gate
    return call


def _end(call, timeout_s=5.0):
    end = time.monotonic() + timeout_s
    while call.running() and time.monotonic() < end:
        time.sleep(0.01)
    return call.code()


def test_complete_and_refused_calls_give_their_places_back(server):
    admission, channel, _ = server
    assert channel.unary_unary("/t.T/Echo")(b"hi", timeout=5) == b"hi"
    exc = pytest.raises(
        grpc.RpcError,
        channel.unary_unary("/t.T/Echo"),
        b"hi",
        timeout=5,
        metadata=(("key", "bad"),),
    )
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    _wait_for(lambda: admission.load("work") == (0, 0))


def test_a_full_lane_refuses_at_once_with_a_retry_hint(server):
    admission, channel, _ = server
    holding = [channel.unary_stream("/t.T/Hold")(b"x", timeout=10) for _ in range(2)]
    for call in holding:
        next(call)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/t.T/Echo")(b"y", timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - t0 < 1.0
    assert dict(info.value.trailing_metadata())["retry-after-ms"] == "100"
    release.set()
    for call in holding:
        list(call)
    _wait_for(lambda: admission.load("work") == (0, 0))
    assert channel.unary_unary("/t.T/Echo")(b"z", timeout=5) == b"z"


def test_silent_calls_are_cancelled_evicted_or_given_up_and_leave_no_trace(server):
    admission, channel, _ = server
    timed_out = _silent(channel)
    assert _end(timed_out, 3.0) == grpc.StatusCode.CANCELLED  # the 0.5 s deadline
    given_up = _silent(channel)
    _wait_for(lambda: admission.load("work")[0] == 1)
    given_up.cancel()
    _wait_for(lambda: admission.load("work") == (0, 0))
    silent = [_silent(channel) for _ in range(3)]
    _wait_for(lambda: admission.load("work")[0] == 3)
    assert channel.unary_unary("/t.T/Echo")(b"ok", timeout=5) == b"ok"  # evicts the oldest
    codes = [_end(call, 3.0) for call in silent]
    assert codes.count(grpc.StatusCode.CANCELLED) == 3  # evicted or timed out
    _wait_for(lambda: admission.load("work") == (0, 0))
    for call in silent + [timed_out, given_up]:
        call.gate.set()


def test_end_streams_ends_watches(server):
    admission, channel, _ = server
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    _wait_for(lambda: admission.load("health") == (0, 1))
    assert admission.end_streams("health") == 1
    assert list(watch) == [] and watch.code() == grpc.StatusCode.OK
    _wait_for(lambda: admission.load("health") == (0, 0))


def test_the_watchdog_runs_alarms_in_order_and_never_a_cancelled_one():
    """An earlier alarm wakes the sleeping thread; a later one (no wake-up) still fires."""
    watchdog = Watchdog()
    fired = []
    done = threading.Event()
    watchdog.after(0.2, lambda: (fired.append("late"), done.set()))
    watchdog.after(0.05, lambda: fired.append("early"))
    watchdog.after(0.1, lambda: fired.append("cancelled")).cancel()
    watchdog.after(0.15, lambda: fired.append("middle"))
    assert done.wait(2)
    assert fired == ["early", "middle", "late"]


def test_a_call_started_on_seeing_the_last_ones_status_is_never_refused(server):
    """A client that calls one after another must never find its own previous call still
    counted against ``max_running``."""
    admission, channel, _ = server
    holding = channel.unary_stream("/t.T/Hold")(b"x", timeout=30)
    next(holding)
    echo = channel.unary_unary("/t.T/Echo")
    three = channel.unary_stream("/t.T/Three")
    for i in range(200):  # one place left: each call must free it before its status arrives
        assert echo(b"%d" % i, timeout=5) == b"%d" % i
        assert list(three(b"%d" % i, timeout=5)) == [b"%d" % i] * 3
    release.set()
    list(holding)
