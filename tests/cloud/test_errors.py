"""Every bad-input class gets its status code and a message naming the field; capacity limits."""

from __future__ import annotations

import math
import time

import grpc
import numpy as np
from cloud_helpers import collect, request, rpc_error, stub, trailers
from faults import SlowModel

from tandem.runtime import codec
from tandem.v1 import decoder_pb2
from tandem.wire import to_proto

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _call(server, req, **kw):
    return rpc_error(lambda: stub(server).Decode(req, timeout=10, **kw))


def _tensor(model, array, spec="fp32"):
    c, comp = codec.parse_codec_spec(spec)
    return to_proto(codec.encode(np.asarray(array, np.float32), c, comp))


def _raw(array, dtype):
    """A Tensor message with raw bytes, bypassing the encoder's own checks (NaN, Inf)."""
    array = np.asarray(array, dtype)
    codec_, dtype_ = {
        "<f4": (decoder_pb2.CODEC_FP32, decoder_pb2.DTYPE_FLOAT32),
        "<f2": (decoder_pb2.CODEC_FP16, decoder_pb2.DTYPE_FLOAT16),
    }[dtype]
    return decoder_pb2.Tensor(
        dtype=dtype_,
        shape=list(array.shape),
        codec=codec_,
        compression=decoder_pb2.COMPRESSION_NONE,
        data=array.tobytes(),
    )


def _cases(model):
    """(name, mutate(request), expected code, words the message must contain)."""
    dims = model.manifest.dims
    limit = dims.max_target_length - 1
    D = dims.hidden_size

    def set_(**fields):
        def mutate(req):
            for key, value in fields.items():
                target = req
                *path, last = key.split(".")
                for part in path:
                    target = getattr(target, part)
                if isinstance(value, list):
                    del getattr(target, last)[:]
                    getattr(target, last).extend(value)
                else:
                    setattr(target, last, value)

        return mutate

    def tensor(array, dtype="<f4"):
        def mutate(req):
            req.hidden_states.CopyFrom(_raw(array, dtype))
            req.source_length = min(req.source_length, max(1, len(array)))

        return mutate

    nan = np.zeros((3, D), np.float32)
    nan[1, 2] = math.nan
    inf = np.zeros((3, D), np.float32)
    inf[0, 0] = math.inf
    return [
        ("empty request id", set_(request_id=""), INVALID, ["request_id"]),
        ("long request id", set_(request_id="x" * 129), INVALID, ["request_id", "128"]),
        ("empty fingerprint", set_(model_fingerprint=""), INVALID, ["model_fingerprint"]),
        (
            "unknown fingerprint",
            set_(model_fingerprint="sha256:" + "0" * 64),
            grpc.StatusCode.FAILED_PRECONDITION,
            ["not served", model.fingerprint],
        ),
        ("missing tensor", lambda r: r.ClearField("hidden_states"), INVALID, ["hidden_states"]),
        (
            "dtype/codec mismatch",
            set_(**{"hidden_states.dtype": decoder_pb2.DTYPE_FLOAT16}),
            INVALID,
            ["hidden_states.dtype"],
        ),
        ("unspecified codec", set_(**{"hidden_states.codec": 0}), INVALID, ["hidden_states.codec"]),
        (
            "unknown compression",
            set_(**{"hidden_states.compression": 9}),
            INVALID,
            ["hidden_states.compression"],
        ),
        ("3-d shape", set_(**{"hidden_states.shape": [1, 3, D]}), INVALID, ["hidden_states.shape"]),
        (
            "wrong hidden size",
            tensor(np.zeros((3, D + 1))),
            INVALID,
            ["hidden_states.shape", str(D)],
        ),
        (
            "too many rows",
            tensor(np.zeros((dims.max_source_length + 1, D))),
            INVALID,
            ["hidden_states.shape", str(dims.max_source_length)],
        ),
        (
            "bytes short",
            set_(**{"hidden_states.data": b"\0" * 12}),
            INVALID,
            ["hidden_states.data"],
        ),
        ("NaN", tensor(nan), INVALID, ["hidden_states.data", "nan"]),
        ("Inf", tensor(inf, "<f2"), INVALID, ["hidden_states"]),
        ("source_length 0", set_(source_length=0), INVALID, ["source_length"]),
        ("source_length > rows", set_(source_length=1000), INVALID, ["source_length"]),
        (
            "max_new_tokens over limit",
            set_(**{"params.max_new_tokens": limit + 1}),
            INVALID,
            ["params.max_new_tokens", str(limit)],
        ),
        (
            "min over max",
            set_(**{"params.max_new_tokens": 5, "params.min_new_tokens": 6}),
            INVALID,
            ["params.min_new_tokens"],
        ),
        (
            "forced token outside vocab",
            set_(**{"params.forced_first_token": dims.vocab_size}),
            INVALID,
            ["params.forced_first_token"],
        ),
        (
            "unknown language",
            set_(**{"params.target_language": "xx"}),
            INVALID,
            ["params.target_language"],
        ),
        (
            "eos outside vocab",
            set_(**{"params.eos_token_id": -1}),
            INVALID,
            ["params.eos_token_id"],
        ),
        ("prefix outside vocab", set_(prefix=[5, dims.vocab_size + 3]), INVALID, ["prefix[1]"]),
        (
            "prefix with EOS",
            set_(prefix=[5, model.manifest.tokens.eos]),
            INVALID,
            ["prefix[1]", "EOS"],
        ),
        (
            "prefix longer than max",
            set_(prefix=[5] * 4, **{"params.max_new_tokens": 3}),
            INVALID,
            ["prefix"],
        ),
        (
            "prefix without forced token",
            set_(prefix=[5, 6], **{"params.forced_first_token": 7}),
            INVALID,
            ["prefix[0]", "forced"],
        ),
    ]


def test_every_bad_input_class_has_its_status_and_names_the_field(shared_server, model):
    cases = _cases(model)
    for name, mutate, code, words in cases:
        req = request(model, [5, 6, 7, 1])
        mutate(req)
        exc = _call(shared_server, req)
        assert exc.code() == code, (name, exc.details())
        for word in words:
            assert word.lower() in exc.details().lower(), (name, word, exc.details())
    # Still serving after all of that.
    ids, _ = collect(stub(shared_server), request(model, [5, 6, 7, 1], max_new_tokens=4))
    assert len(ids) <= 4


def test_oversized_message_is_refused_by_the_transport(shared_server, model):
    dims = model.manifest.dims
    req = request(model, [5, 1])
    # Legal maximum: longest source in fp32 passes.
    big = np.zeros((dims.max_source_length, dims.hidden_size), np.float32)
    req.hidden_states.CopyFrom(_tensor(model, big))
    req.params.max_new_tokens = 2
    collect(stub(shared_server), req)
    req.hidden_states.data = b"\0" * (shared_server.max_message_bytes + 1)
    exc = _call(shared_server, req)
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry-after-ms" not in trailers(exc), "a too-large request must not be retried"


def test_full_queue_is_resource_exhausted_with_a_retry_hint(serve, long_model):
    server = serve(
        models=[long_model], scheduler={"max_batch": 1, "max_queue": 1, "retry_after_ms": 150}
    )
    client = stub(server)
    long_req = lambda: request(long_model, [5, 6, 1], max_new_tokens=1000, min_new_tokens=1000)  # noqa: E731
    running = client.Decode(long_req(), timeout=30)
    next(running)  # the first occupies the batch slot...
    queued = client.Decode(long_req(), timeout=30)
    _wait_for(lambda: server.engines[long_model.fingerprint].load == (1, 1))  # ...the second waits
    exc = _call(server, long_req())
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in exc.details()
    assert trailers(exc)["retry-after-ms"] == "150"
    assert trailers(exc)["grpc-retry-pushback-ms"] == "150"
    running.cancel()
    queued.cancel()


def test_per_client_stream_limit(serve, long_model):
    server = serve(models=[long_model], limits={"max_streams_per_client": 2})
    client = stub(server)
    calls = []
    for _ in range(2):
        call = client.Decode(
            request(long_model, [5, 1], max_new_tokens=1000, min_new_tokens=1000), timeout=30
        )
        next(call)
        calls.append(call)
    exc = _call(server, request(long_model, [5, 1]))
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "per-client limit" in exc.details() and "retry-after-ms" in trailers(exc)
    for call in calls:
        call.cancel()


def test_deadline_ends_the_stream_with_its_tokens(serve, long_bundle):
    # 1 ms a step: 1,000 tokens take at least a second, far past the 0.3 s deadline.
    long_model = SlowModel(long_bundle, delay_s=0.001)
    server = serve(models=[long_model], limits={"deadline_margin_ms": 100})
    req = request(long_model, [5, 6, 1], max_new_tokens=1000, min_new_tokens=1000)
    ids, final = collect(stub(server), req, timeout=0.3)
    assert final.reason == decoder_pb2.FINISH_REASON_DEADLINE
    assert 0 < len(ids) < 1000
    _wait_for(lambda: server.engines[long_model.fingerprint].load == (0, 0))


def test_model_failure_fails_only_its_request(model):
    """An exception inside the runtime answers INTERNAL for that sequence; others go on."""
    from tandem.cloud.engine import Engine, ModelFailure
    from tandem.cloud.metrics import Metrics
    from tandem.cloud.scheduler import Scheduler
    from tandem.cloud.validation import Job, ServedModel
    from tandem.runtime.decoding import GenerationParams

    served = ServedModel.from_manifest(model.manifest, model.fingerprint)
    engine = Engine(model, Scheduler(4, 4, 0.1), Metrics())
    engine.start()
    hidden = model.encode([5, 6, 1])
    good = Job("good", served, hidden, GenerationParams(max_new_tokens=20, min_new_tokens=20))
    # Unvalidated params make the runtime raise inside DecodeBatch.add, as a broken model would.
    bad = Job("bad", served, hidden, GenerationParams(max_new_tokens=10_000))
    now = time.monotonic()
    streams = [engine.submit(job, now, now + 10) for job in (good, bad, good)]
    outcomes = []
    for stream in streams:
        tokens = 0
        while True:
            item = stream.events.get(timeout=10)
            if isinstance(item, ModelFailure):
                outcomes.append("failed")
                break
            tokens += len(item.tokens)
            if item.finish:
                outcomes.append(tokens)
                break
    engine.stop()
    assert outcomes == [20, "failed", 20]


def _wait_for(condition, timeout_s=5.0):
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)
