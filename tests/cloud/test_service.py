"""The service answers like the local runtime: same tokens, stream contract, batching."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from cloud_helpers import collect, expected_ids, request, stub

from tandem.v1 import decoder_pb2


def _sources(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [
        [int(t) for t in rng.integers(3, 96, size=int(rng.integers(1, 40)))] + [1] for _ in range(n)
    ]


def test_fp32_streams_equal_local_runtime(shared_server, model):
    client = stub(shared_server)
    for i, src in enumerate(_sources(6, seed=1)):
        params = dict(max_new_tokens=[0, 5, 30][i % 3], min_new_tokens=i % 2 * 3)
        ids, final = collect(client, request(model, src, pad_rows=i % 3, **params))
        want, finish = expected_ids(model, src, **params)
        assert ids == want
        assert final.reason == {"eos": 1, "length": 2}[finish]
        assert final.replica_id == shared_server.replica_id
        assert final.queue_ms >= 0 and final.decode_ms >= 0


def test_forced_first_token_is_streamed_and_prefix_resumes_exactly(shared_server, model):
    client = stub(shared_server)
    src = _sources(1, seed=2)[0]
    full, final = collect(client, request(model, src, forced_first_token=7, max_new_tokens=12))
    assert full[0] == 7, "the forced token is position 0 and streamed"
    assert full == expected_ids(model, src, forced_first_token=7, max_new_tokens=12)[0]
    # A stream cut after k tokens resumes from them and yields the rest, unchanged.
    for k in (1, 4):
        rest, resumed = collect(
            client,
            request(model, src, forced_first_token=7, max_new_tokens=12, prefix=full[:k]),
        )
        assert full[:k] + rest == full
        assert resumed.token_count == final.token_count


def test_forced_token_counts_towards_max_new_tokens(shared_server, model):
    ids, final = collect(
        stub(shared_server), request(model, [4, 5, 1], forced_first_token=9, max_new_tokens=1)
    )
    assert ids == [9]
    assert (final.reason, final.token_count) == (decoder_pb2.FINISH_REASON_LENGTH, 1)


def test_prefix_that_fills_max_new_tokens_ends_at_once(shared_server, model):
    ids, final = collect(
        stub(shared_server), request(model, [4, 5, 1], max_new_tokens=3, prefix=[8, 9, 10])
    )
    assert ids == []
    assert (final.reason, final.token_count) == (decoder_pb2.FINISH_REASON_LENGTH, 3)


@pytest.mark.parametrize("spec", ["fp16+zstd", "int8+gzip", "fp32+zstd"])
def test_lossy_and_compressed_codecs_decode(shared_server, model, spec):
    src = _sources(1, seed=3)[0]
    ids, final = collect(stub(shared_server), request(model, src, spec=spec, max_new_tokens=10))
    assert final.token_count == len(ids) <= 10
    if spec == "fp32+zstd":
        assert ids == expected_ids(model, src, max_new_tokens=10)[0]


def test_list_models_describes_what_requests_are_checked_against(shared_server, model):
    (info,) = stub(shared_server).ListModels(decoder_pb2.ListModelsRequest(), timeout=5).models
    dims = model.manifest.dims
    assert info.fingerprint == model.fingerprint
    assert (info.hidden_size, info.vocab_size) == (dims.hidden_size, dims.vocab_size)
    assert info.max_source_length == dims.max_source_length
    assert info.max_new_tokens == dims.max_target_length - 1
    assert info.eos_token_id == model.manifest.tokens.eos
    assert set(info.codecs) == {1, 2, 3} and decoder_pb2.COMPRESSION_NONE in info.compressions


def test_sixteen_concurrent_clients_are_batched_and_all_correct(serve, model):
    server = serve(scheduler={"max_batch": 16, "max_queue": 16})
    sources = _sources(16, seed=4)
    results: dict[int, object] = {}

    def one(i: int) -> None:
        try:
            client = stub(server)  # a channel per client, like separate devices
            results[i] = collect(
                client, request(model, sources[i], min_new_tokens=40, max_new_tokens=50)
            )[0]
        except Exception as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, src in enumerate(sources):
        assert results[i] == expected_ids(model, src, min_new_tokens=40, max_new_tokens=50)[0]
    sizes = server.metrics.registry.get_sample_value(
        "tandem_cloud_batch_size_sum", {"model": model.manifest.name}
    )
    steps = server.metrics.registry.get_sample_value(
        "tandem_cloud_batch_size_count", {"model": model.manifest.name}
    )
    assert sizes / steps > 2, "concurrent requests must share batched steps"


def _chunks(client, req) -> list[int]:
    """The lengths of a stream's token chunks, in order."""
    return [
        len(event.tokens.ids)
        for event in client.Decode(req, timeout=20)
        if event.WhichOneof("event") == "tokens"
    ]


def test_tokens_between_the_first_chunk_and_the_end_wait_for_the_stream_interval(serve, long_model):
    """The first chunk goes at once, then at most one per ``stream_interval_ms``, and the
    last tokens the moment the sequence ends: with a 60 s interval a 600-token answer is two
    chunks; with 0, a chunk goes whenever the previous one is out (how many tokens each
    holds depends on how a send compares with a step, so only "many" is asserted)."""
    req = request(long_model, [5, 6, 7, 1], min_new_tokens=600, max_new_tokens=600)
    hold = {"stream_interval_ms": 60_000, "stream_interval_max_ms": 60_000}
    held = _chunks(stub(serve(models=[long_model], scheduler=hold)), req)
    assert sum(held) == 600 and len(held) <= 2  # one if the end beat the handler
    assert len(held) == 1 or held[0] <= 2, "the first chunk goes at once"
    unheld = _chunks(stub(serve(models=[long_model], scheduler={"stream_interval_ms": 0})), req)
    assert sum(unheld) == 600 and len(unheld) > 10


def test_the_hold_follows_the_measured_cost_of_a_message(serve, long_model):
    """With a CPU share so small that one stream's messages would exceed it at any pace,
    the hold reaches its longest: a 600-token answer is its first chunk and its last (or
    one chunk, when the end lands before the handler took the first)."""
    req = request(long_model, [5, 6, 7, 1], min_new_tokens=600, max_new_tokens=600)
    paced = {"stream_interval_ms": 1, "stream_cpu_share": 1e-6, "stream_interval_max_ms": 60_000}
    chunks = _chunks(stub(serve(models=[long_model], scheduler=paced)), req)
    assert sum(chunks) == 600 and len(chunks) <= 2
