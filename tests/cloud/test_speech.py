"""The cloud decoder serves Whisper bundles through the same Decode contract.

A speech request carries only what a text request carries: the forced first token (the
language token of a multilingual model) names the window prompt, which the replica builds
from its own manifest, streams first and holds a resumed request to.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from cloud_helpers import collect, rpc_error, start_server, stub

from tandem.cloud.validation import ServedModel
from tandem.runtime import codec
from tandem.runtime.seq2seq import Seq2Seq
from tandem.wire import build_decode_request

DOCS = Path(__file__).resolve().parents[2] / "docs" / "speech.md"


def window(model: Seq2Seq, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    samples = (0.1 * rng.standard_normal(12000)).astype(np.float32)
    return model.encode_features(model.features(samples)[0])  # (S, D)


def speech_request(model, hidden, params, prefix=(), **overrides):
    fields = dict(
        request_id=str(uuid.uuid4()),
        model_fingerprint=model.fingerprint,
        hidden_states=codec.encode(hidden, codec.Codec.FP32),
        source_length=hidden.shape[0],
        max_new_tokens=params.max_new_tokens,
        forced_first_token=params.forced_first_token,
        prefix=prefix,
    )
    fields.update(overrides)
    return build_decode_request(**fields)


@pytest.fixture(scope="module")
def served(whisper_bundle):
    models = [Seq2Seq.load(whisper_bundle("multi")), Seq2Seq.load(whisper_bundle("en"))]
    server = start_server(models)
    yield models, stub(server)
    server.stop()


@pytest.mark.parametrize("which", [0, 1], ids=["multilingual", "english_only"])
def test_decode_streams_the_prompt_then_the_local_ids(served, which):
    models, client = served
    model = models[which]
    hidden = window(model)
    params = model.speech_params("en")
    local = model.decode(hidden, params)
    want = local.ids[:-1] if local.finish == "eos" else local.ids
    ids, final = collect(client, speech_request(model, hidden, params))
    assert ids == want
    assert tuple(ids[: len(params.forced_prompt)]) == params.forced_prompt
    # A resumed request (the device got k tokens) streams the rest, the same ids.
    k = len(params.forced_prompt) + 2
    rest, _ = collect(client, speech_request(model, hidden, params, prefix=want[:k]))
    assert want[:k] + rest == want


def test_bad_speech_requests_are_invalid_argument(served):
    models, client = served
    model = models[0]
    hidden = window(model)
    params = model.speech_params("en")
    prompt = list(params.forced_prompt)
    cases = [
        (dict(forced_first_token=None), "params.forced_first_token is required by speech model"),
        (dict(forced_first_token=7), "token 7 starts no window prompt"),
        (dict(prefix=[prompt[0], 5]), "does not start with the window prompt"),
        (dict(max_new_tokens=len(prompt)), "leaves no room after the 3-token window prompt"),
    ]
    for overrides, words in cases:
        exc = rpc_error(lambda o=overrides: client.Decode(speech_request(model, hidden, params,
                                                                         **o), timeout=10))  # fmt: skip
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in exc.details()
        assert "\n" not in exc.details()


SHAPES = {"tiny": 384, "base": 512, "small": 768}
ROWS = 1500  # a 30 s window's encoder output (3000 log-mel frames / 2)


def message_bytes(hidden_size: int, spec: str) -> int:
    """The DecodeRequest of one full window as the agent sends it: a 36-character request id,
    a sha256 fingerprint, 448 new tokens at most, a language token forced."""
    hidden = np.random.default_rng(0).standard_normal((ROWS, hidden_size)).astype(np.float32)
    c, comp = codec.parse_codec_spec(spec)
    return build_decode_request(
        request_id="0" * 36,
        model_fingerprint="sha256:" + "0" * 64,
        hidden_states=codec.encode(hidden, c, comp),
        source_length=ROWS,
        max_new_tokens=448,
        forced_first_token=50259,
    ).ByteSize()


def test_a_full_window_fits_the_replica_with_every_codec_and_the_docs_say_so(whisper_bundle):
    manifest = Seq2Seq.load(whisper_bundle("multi")).manifest
    table = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\| whisper-(\w+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (.+) \|$", line)
        if m:
            table[m[1]] = (int(m[2]), int(m[3]), int(m[4]), int(m[5]), m[6].strip())
    assert set(table) == set(SHAPES), "docs/speech.md lists every shape"
    limit = 4 * 1024 * 1024
    for name, d in SHAPES.items():
        sizes = {spec: message_bytes(d, spec) for spec in ("fp32", "fp16", "int8")}
        assert table[name][:4] == (d, sizes["fp32"], sizes["fp16"], sizes["int8"]), name
        fits = [spec for spec, n in sizes.items() if n <= limit]
        assert table[name][4] == ("all" if len(fits) == 3 else ", ".join(fits)), name
        dims = dataclasses.replace(
            manifest.dims, hidden_size=d, max_source_length=ROWS, max_target_length=448
        )
        served = ServedModel.from_manifest(dataclasses.replace(manifest, dims=dims), "sha256:x")
        assert served.max_message_bytes() >= sizes["fp32"]  # the replica's own receive limit
