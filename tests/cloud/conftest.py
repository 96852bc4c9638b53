"""Cloud service fixtures: real bundles, real servers on 127.0.0.1 port 0, real gRPC clients."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cloud_helpers import start_server  # noqa: E402


@pytest.fixture(scope="session")
def model(marian_bundle):
    """The tiny random Marian bundle, loaded once (the local-runtime reference)."""
    from tandem.runtime.seq2seq import Seq2Seq

    return Seq2Seq.load(marian_bundle)


@pytest.fixture(scope="session")
def long_bundle(tmp_path_factory) -> Path:
    """A tiny Marian bundle allowing 1023 generated tokens: requests that last long enough
    (about half a second) to be cancelled, drained or deadlined in the middle."""
    import torch
    import transformers as tf

    from tandem.runtime.export import export_hf

    torch.manual_seed(1)
    config = tf.MarianConfig(
        vocab_size=96,
        d_model=32,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=1024,
        dropout=0.0,
    )
    hf_dir = tmp_path_factory.mktemp("hf_long")
    tf.MarianMTModel(config).eval().save_pretrained(hf_dir)
    out = tmp_path_factory.mktemp("bundle_long")
    export_hf(hf_dir, out, name="long", overwrite=True)
    return out


@pytest.fixture(scope="session")
def long_model(long_bundle):
    from tandem.runtime.seq2seq import Seq2Seq

    return Seq2Seq.load(long_bundle)


@pytest.fixture
def serve(model):
    """serve(**config) -> started CloudServer (the tiny Marian model unless ``models=``)."""
    servers = []

    def make(models=None, environ=None, **config):
        server = start_server(models or [model], environ=environ, **config)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(model):
    """One default server for the many tests that only send requests."""
    server = start_server([model])
    yield server
    server.stop()
