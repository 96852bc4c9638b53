"""``tandem transcribe`` as users (and the outside check) run it: real subprocesses, real files.

The outside check builds a random-weight Whisper checkpoint, exports it with
``tandem export --hf`` and compares ``tandem transcribe --ids`` on its WAV files with
transformers' greedy ``generate(language="en", task="transcribe")``; this is that check in small.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

import hf_models
from tandem.runtime.wav import read_wav
from wavfiles import write_wav

pytestmark = pytest.mark.export


def tandem(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli", *args], input=stdin, capture_output=True, timeout=300
    )


@pytest.fixture(scope="module")
def cli_bundle(whisper_checkpoint, tmp_path_factory):
    """A Whisper bundle exported by the CLI, from a checkpoint with a tokenizer.json."""
    hf = tmp_path_factory.mktemp("hf_whisper_cli") / "ckpt"
    shutil.copytree(whisper_checkpoint("multi"), hf)
    hf_models.write_whisper_tokenizer(hf / "tokenizer.json")
    out = tmp_path_factory.mktemp("bundle_whisper_cli") / "bundle"
    done = tandem("export", "--hf", str(hf), "--out", str(out))
    assert done.returncode == 0, done.stderr.decode()
    assert "exported whisper bundle" in done.stdout.decode()
    return hf, out


def test_transcribe_ids_equal_transformers_one_line_per_file(cli_bundle, tmp_path):
    import torch
    import transformers

    hf, bundle = cli_bundle
    reference = transformers.WhisperForConditionalGeneration.from_pretrained(hf).eval()
    extractor = transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=1)
    signals = hf_models.whisper_signals(np.random.default_rng(21), 4)
    paths = [
        write_wav(tmp_path / f"{i}.wav", x, 16000, "pcm16" if i % 2 else "float32")
        for i, x in enumerate(signals)
    ]
    want = []
    for path in paths:
        samples = read_wav(path).samples  # PCM16 as x / 32768, float32 as is
        feats = extractor(samples, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = reference.generate(feats, language="en", task="transcribe")[0].tolist()
        want.append(" ".join(map(str, ids)))
    stdin = "".join(f"{p}\n" for p in paths).encode()
    out = tandem(
        "transcribe", "--bundle", str(bundle), "--language", "en", "--ids", "-", stdin=stdin
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().splitlines() == want
    one = tandem("transcribe", "--bundle", str(bundle), "--language", "en", "--ids", str(paths[0]))
    assert one.returncode == 0 and one.stdout.decode().strip() == want[0]


def test_transcribe_prints_text_without_special_tokens(cli_bundle, tmp_path):
    from tandem.runtime.seq2seq import Seq2Seq

    _, bundle = cli_bundle
    x = hf_models.whisper_signals(np.random.default_rng(4), 1)[0]
    path = write_wav(tmp_path / "a.wav", x)
    out = tandem("transcribe", "--bundle", str(bundle), "--language", "en", str(path))
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode().strip()
    want = Seq2Seq.load(bundle).transcribe(read_wav(path), "en")
    assert text == want.text and text.startswith("w") and "<|" not in text


def test_bad_audio_lines_keep_alignment_and_fail(cli_bundle, tmp_path):
    _, bundle = cli_bundle
    good = write_wav(tmp_path / "good.wav", np.zeros(800))
    (tmp_path / "text.wav").write_text("not audio")
    lines = [str(good), str(tmp_path / "text.wav"), str(tmp_path / "missing.wav"), "", str(good)]
    out = tandem("transcribe", "--bundle", str(bundle), "--ids", "--language", "en", "-",
                 stdin="\n".join(lines).encode() + b"\n")  # fmt: skip
    assert out.returncode == 1
    got = out.stdout.decode().split("\n")
    assert len(got) == 6 and got[1] == got[2] == got[3] == "" and got[0] == got[4]
    err = out.stderr.decode()
    assert "line 2: error:" in err and "not a WAV file" in err
    assert "line 3: error:" in err and "no such file" in err
    assert "line 4: error: empty WAV path" in err
    assert "Traceback" not in err


def test_bad_input_is_one_line_and_exit_status_2(
    cli_bundle, whisper_bundle, marian_bundle, tmp_path
):
    _, bundle = cli_bundle
    ids_only = whisper_bundle("multi")
    (tmp_path / "text.wav").write_text("not audio")
    mulaw = tmp_path / "mulaw.wav"
    mulaw.write_bytes(b"RIFF\x2e\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x07\x00\x01\x00\x40\x1f\x00"
                      b"\x00\x40\x1f\x00\x00\x01\x00\x08\x00data\x02\x00\x00\x00\xff\xff")  # fmt: skip
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0))
    many = write_wav(tmp_path / "many.wav", np.zeros((100, 20)))
    slow = write_wav(tmp_path / "slow.wav", np.zeros(100), rate=500)
    long = write_wav(tmp_path / "long.wav", np.zeros(16000 * 2))
    good = write_wav(tmp_path / "good.wav", np.zeros(800))
    b = ("--bundle", str(bundle))
    cases = [
        ((*b, str(tmp_path / "text.wav")), "not a WAV file"),
        ((*b, str(mulaw)), "unsupported WAV encoding mu-law"),
        ((*b, str(empty)), "audio is empty"),
        ((*b, str(many)), "20 channels"),
        ((*b, str(slow)), "sample rate 500 Hz"),
        ((*b, "--max-duration-s", "1.5", str(long)), "the limit is 1.5 s"),
        ((*b, "--language", "xx", str(good)), "unknown language 'xx'"),
        ((*b, "--max-new-tokens", "0", str(good)), "max_new_tokens must be in [1, 60]"),
        (("--bundle", str(ids_only), str(good)), "has no tokenizer"),
        (("--bundle", str(marian_bundle), str(good)), "is a text model"),
    ]
    for args, message in cases:
        out = tandem("transcribe", *args)
        err = out.stderr.decode()
        assert out.returncode == 2, (args, err)
        assert message in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert out.stdout == b""
