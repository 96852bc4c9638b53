"""Audio on the edge agent: a Whisper bundle's transcript is the same on every route.

Real agents, real cloud replicas on loopback and the real local API; the reference is
``Seq2Seq.transcribe`` on the same bundle (itself checked against transformers in
tests/runtime/test_whisper.py). The audio is longer than the test model's 1 s window, so every
request is several windows, each routed on its own.
"""

from __future__ import annotations

import dataclasses
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
from edge_helpers import collect, contiguous
from faults import SlowBatch, SlowModel

from tandem.edge.agent import Agent, Outcome, Piece, Request
from tandem.edge.audio_request import upload_refusal
from tandem.edge.client import EdgeClient
from tandem.edge.config import CloudSettings, EdgeConfig
from tandem.edge.server import create_edge_server
from tandem.edge.stream_check import StreamCheck, StreamLimits
from tandem.errors import CloudViolation, InputError
from tandem.policy import payload_bytes
from tandem.runtime.seq2seq import Seq2Seq
from tandem.runtime.wav import parse_wav
from tandem.v1 import decoder_pb2
from wavfiles import wav_bytes

SECONDS = 2.5


def signal(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Speech-like bursts over a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 10))
    gate = (np.sin(2 * np.pi * 3 * t) > 0).astype(float)
    return np.clip(0.2 * x * gate + 0.02 * rng.standard_normal(len(t)), -1, 1)


@pytest.fixture(scope="module")
def wav():
    return wav_bytes(signal(SECONDS))


@pytest.fixture(scope="module")
def expected(whisper_text_bundle, wav):
    model = Seq2Seq.load(whisper_text_bundle)
    out = model.transcribe(parse_wav(wav), language="en")
    assert len(out.segments) >= 3, "the audio spans several windows"
    assert out.ids, "a transcript to compare"
    return out


@pytest.fixture
def speech_cloud(cloud_factory, whisper_text_bundle):
    def start(model=None):
        return cloud_factory(model or Seq2Seq.load(whisper_text_bundle))

    return start


@pytest.fixture
def speech_agent(agent_factory, whisper_text_bundle):
    def make(port, policy="always_cloud", **kwargs):
        return agent_factory(port, policy, model=Seq2Seq.load(whisper_text_bundle), **kwargs)

    return make


@pytest.mark.parametrize("route", ["local", "cloud", "handoff"])
def test_every_route_gives_the_local_transcript(route, speech_cloud, speech_agent, wav, expected):
    if route == "local":
        agent = speech_agent(None)
    else:
        _, port = speech_cloud()
        agent = speech_agent(port, force_route=route)
    pieces, outcome = run(agent, wav)
    assert outcome.ids == expected.ids
    assert contiguous(pieces) == expected.ids
    assert outcome.text == expected.text
    assert outcome.finish == expected.finish
    assert outcome.fallbacks == []
    if route == "cloud":
        assert outcome.route == "cloud" and outcome.decision == "cloud"
    if route == "local":
        assert outcome.route == "local"


class CuttingBatch(SlowBatch):
    """A slow cloud batch that stops its server after ``cut_after`` decoding steps."""

    owner = None

    def step(self):
        owner = self.owner
        owner.cut_after -= 1
        if owner.cut_after == 0:
            threading.Thread(target=owner.on_cut).start()  # aborts the stream for real
        return super().step()


class CuttingModel(SlowModel):
    cut_after = 3
    on_cut = None

    def new_batch(self):
        batch = CuttingBatch(self.bundle.sessions, self.manifest)
        batch.delay_s, batch.owner = self.delay_s, self
        return batch


def test_cloud_killed_mid_stream_fails_over_to_the_same_transcript(
    whisper_text_bundle, speech_cloud, speech_agent, wav, expected
):
    slow = CuttingModel(whisper_text_bundle, delay_s=0.02)
    server, port = speech_cloud(slow)
    slow.on_cut = server.stop
    agent = speech_agent(port, failure_threshold=100)
    pieces, outcome = run(agent, wav)
    assert outcome.fallbacks[0] == "stream_broken"
    assert outcome.ids == expected.ids
    assert contiguous(pieces) == expected.ids
    assert outcome.text == expected.text


def test_the_policy_prices_the_encoder_output(speech_agent, whisper_text_bundle, wav):
    model = Seq2Seq.load(whisper_text_bundle)
    seen = []

    class Watching(Agent):
        def observations(self, src_len, *args, **kwargs):
            seen.append(src_len)
            return super().observations(src_len, *args, **kwargs)

    agent = speech_agent(None)
    watching = Watching(agent.config, model=model)
    try:
        run(watching, wav)
    finally:
        watching.close()
    dims = model.manifest.dims
    rows = dims.max_source_length  # a window's encoder output: frames / 2
    assert seen and set(seen) == {rows}
    assert watching.device_profile.hidden_size == dims.hidden_size
    assert payload_bytes(rows, watching.device_profile.hidden_size, "fp32") == rows * 64 * 4


def test_an_upload_over_the_message_limit_is_decoded_locally(speech_cloud, speech_agent, wav,
                                                             expected):  # fmt: skip
    _, port = speech_cloud()
    agent = speech_agent(port, max_message_bytes=8000)  # fp32: 50 x 64 x 4 = 12800 bytes
    message = upload_refusal(agent, 50)
    assert message == (
        "hidden states 50 x 64 in fp32 need up to 13824 bytes, over cloud.max_message_bytes "
        "8000; fp16 (7424 bytes), int8 (4424 bytes) would fit"
    )
    _, outcome = run(agent, wav)
    assert set(outcome.fallbacks) == {"upload_too_large"}
    assert outcome.route == "local"
    assert outcome.ids == expected.ids


def test_a_wrong_prompt_from_the_cloud_keeps_no_part_of_it(whisper_text_bundle):
    """A replica that breaks the prompt leaves no valid prefix: resuming from part of a prompt
    would decode from the wrong context."""
    model = Seq2Seq.load(whisper_text_bundle)
    params = model.speech_params("en")
    request = decoder_pb2.DecodeRequest(
        params=decoder_pb2.GenerationParams(forced_first_token=params.forced_prompt[0])
    )
    check = StreamCheck(request, StreamLimits.from_manifest(model.manifest))
    prompt = list(params.forced_prompt)
    with pytest.raises(CloudViolation, match="forced_prompt") as info:
        check.chunk(0, [prompt[0], prompt[1] + 1])
    assert info.value.tokens == []
    check = StreamCheck(request, StreamLimits.from_manifest(model.manifest))
    assert check.chunk(0, [*prompt, 5]) == [*prompt, 5]


# -- the local API ------------------------------------------------------------------------------


@pytest.fixture
def edge_api(speech_agent, agent_factory):
    """-> (agent, EdgeClient) of a real local API server on the agent's Unix socket."""
    servers, clients = [], []

    def start(port=None, model=None, **kwargs):
        if model is None:
            agent = speech_agent(port, **kwargs)
        else:
            agent = agent_factory(port, model=model, **kwargs)
        server, where = create_edge_server(agent)
        servers.append(server)
        client = EdgeClient(where["socket"], timeout_s=60)
        clients.append(client)
        return agent, client

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.stop(None)


@pytest.mark.parametrize("route", ["local", "cloud"])
def test_audio_over_the_local_api(route, edge_api, speech_cloud, wav, expected):
    port = speech_cloud()[1] if route == "cloud" else None
    agent, client = edge_api(port)
    events = list(client.stream("", audio=wav, language="en"))
    final = events[-1].final
    assert list(final.ids) == expected.ids
    assert final.text == expected.text
    assert "".join(e.piece.text for e in events[:-1]) == expected.text
    assert final.route == route


def _wav_with(tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16,
              frames: int = 1600) -> bytes:  # fmt: skip
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    data = bytes(frames * align)
    body = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
    return b"RIFF" + struct.pack("<I", 4 + len(body) + len(data)) + b"WAVE" + body + data


BAD_AUDIO = {
    "not_wav": (b"hello, not a wav file", "not a WAV file"),
    "empty_bytes": (b"", "audio.wav: must not be empty"),
    "mu_law": (_wav_with(tag=7, bits=8), "unsupported WAV encoding mu-law"),
    "zero_samples": (_wav_with(frames=0), "audio is empty"),
    "low_rate": (_wav_with(rate=500), "sample rate 500 Hz"),
    "channels": (_wav_with(channels=17), "17 channels"),
    "too_long": (wav_bytes(np.zeros(16000 * 3), encoding="pcm8"), "the limit is 2 s"),
    "too_big": (wav_bytes(np.zeros(16000 * 2)), "the limit is 60000 (max_audio_bytes)"),
}


def test_every_bad_audio_is_invalid_argument_in_one_line(edge_api):
    agent, client = edge_api(None)
    agent.config = dataclasses.replace(agent.config, max_audio_s=2.0, max_audio_bytes=60000)
    for name, (data, words) in BAD_AUDIO.items():
        with pytest.raises(InputError) as info:
            client.ask("", audio=data)
        message = str(info.value)
        assert words in message, name
        assert "\n" not in message, name
    for kwargs, words in [
        ({"text": "w1 w2"}, "is a speech model; send audio"),
        ({"text": "w1", "audio": BAD_AUDIO["too_long"][0]}, "set one, not both"),
        ({"text": "", "audio": b"RIFF", "target": "en"}, "target_language: must be empty"),
        ({"text": "", "audio": b"RIFF", "language": "xx"}, "audio.language: unknown language"),
    ]:
        text = kwargs.pop("text")
        with pytest.raises(InputError, match=words):
            client.ask(text, **kwargs)


def test_audio_to_a_text_model_is_invalid_argument(edge_api, text_bundle, wav):
    _, client = edge_api(None, model=Seq2Seq.load(text_bundle))
    with pytest.raises(InputError, match="is a text model; send text"):
        client.ask("", audio=wav)


def test_edge_config_bounds_audio_limits():
    with pytest.raises(Exception, match="max_audio_s must be > 0"):
        EdgeConfig(socket="x", max_audio_s=0)
    with pytest.raises(Exception, match="max_message_bytes must be >= 1024"):
        CloudSettings(max_message_bytes=10)


def test_ask_audio_prints_the_transcript(edge_api, speech_cloud, wav, expected, tmp_path):
    _, port = speech_cloud()
    agent, _ = edge_api(port)
    path = tmp_path / "speech.wav"
    path.write_bytes(wav)

    def ask(*args):
        return subprocess.run(
            [sys.executable, "-m", "tandem.cli", "ask", *args, "--agent", agent.config.socket],
            capture_output=True, timeout=120,
        )  # fmt: skip

    out = ask("--audio", str(path), "--language", "en")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode() == expected.text
    assert "[cloud (" in out.stderr.decode()
    (tmp_path / "bad.wav").write_bytes(b"not a wav at all")
    for args, words in [
        (("--audio", str(tmp_path / "bad.wav")), "audio.wav: not a WAV file"),
        (("--audio", str(tmp_path / "missing.wav")), "missing.wav: cannot be read"),
        (("text", "--audio", str(path)), "not both"),
    ]:
        out = ask(*args)
        err = out.stderr.decode().strip()
        assert out.returncode == 2, err
        assert words in err and "\n" not in err and "Traceback" not in err


def run(agent, wav: bytes, **kwargs) -> tuple[list[Piece], Outcome]:
    """An English audio request through ``agent``: its pieces and its ``Outcome``."""
    return collect(agent, Request(text="", audio=wav, language="en", **kwargs))
