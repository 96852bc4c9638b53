"""The speech trainer: a 20-step smoke run on 16 utterances checkpoints, resumes to the
same state as an uninterrupted run, and exports a bundle ``tandem transcribe`` loads."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.export,
    pytest.mark.skipif(
        shutil.which("espeak-ng") is None,
        reason="espeak-ng is not installed (apt-get install espeak-ng); it speaks the data",
    ),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tools.speech_data import heldout_set, training_set, write_dataset

    root = tmp_path_factory.mktemp("speech")
    write_dataset(root / "train", training_set(16, seed=11, exclude=frozenset()))
    write_dataset(root / "heldout", heldout_set(2))
    return root


def _train(data, out, *extra):
    from tools import train_speech

    args = ["--data", str(data), "--out", str(out), "--steps", "20", "--smoke", *extra]
    assert train_speech.main([*args, "--ckpt-every", "10"]) == 0


def _weights(path):
    import torch

    return torch.load(path, weights_only=False)


def test_smoke_run_resumes_to_the_same_state_and_exports(data, tmp_path):
    import torch

    from tandem.runtime.bundle import read_manifest

    _train(data, tmp_path / "straight")
    _train(data, tmp_path / "resumed", "--stop-after-steps", "10", "--no-export")
    assert _weights(tmp_path / "resumed" / "checkpoint.pt")["step"] == 10
    _train(data, tmp_path / "resumed", "--resume")
    a = _weights(tmp_path / "straight" / "checkpoint.pt")
    b = _weights(tmp_path / "resumed" / "checkpoint.pt")
    assert a["step"] == b["step"] == 20
    assert a["stream"] == b["stream"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name

    bundle = tmp_path / "straight" / "bundle"
    manifest = read_manifest(bundle)
    assert manifest.architecture == "whisper"
    assert manifest.audio.n_samples == 160_000 and manifest.audio.n_frames == 1000
    assert sorted(manifest.languages) == ["de", "en", "es", "fr"]

    subprocess.run(["espeak-ng", "-v", "de", "-w", str(tmp_path / "a.wav"), "zwölf"], check=True)
    cmd = [sys.executable, "-m", "tandem.cli", "transcribe", "--bundle", str(bundle)]
    out = subprocess.run(
        [*cmd, "--language", "de", "--max-new-tokens", "8", "--ids", str(tmp_path / "a.wav")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    ids = [int(t) for t in out.stdout.split()]
    assert 0 < len(ids) <= 8 and all(0 <= t < manifest.dims.vocab_size for t in ids)


def test_existing_checkpoint_needs_resume(data, tmp_path):
    from tools import train_speech

    _train(data, tmp_path / "run", "--stop-after-steps", "10", "--no-export")
    args = ["--data", str(data), "--out", str(tmp_path / "run"), "--smoke"]
    assert train_speech.main(args) == 2
    assert train_speech.main([*args, "--out", str(tmp_path / "none"), "--resume"]) == 2
