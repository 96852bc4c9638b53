"""The ``tandem`` command as users run it: a real subprocess, real bundles."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tandem.policy import Profile
from tandem.policy.energy import DEFAULT_POWER_W


def tandem(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=300,
    )


def test_help_lists_subcommands():
    out = tandem("--help")
    assert out.returncode == 0
    for command in ("generate", "export", "profile"):
        assert command in out.stdout.decode()


def test_generate_ids_from_stdin_one_line_per_input(marian_bundle):
    from tandem.runtime.seq2seq import Seq2Seq

    model = Seq2Seq.load(marian_bundle)
    lines = ["5 6 7 1", "40 41 1", "9 1"]
    stdin = ("\n".join(lines) + "\n").encode()
    out = tandem("generate", "--bundle", str(marian_bundle), "--ids", "--max-new-tokens", "12", "-",
                 stdin=stdin)  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()
    got = out.stdout.decode().splitlines()
    want = [
        " ".join(map(str, model.generate([int(t) for t in line.split()], max_new_tokens=12).ids))
        for line in lines
    ]
    assert got == want


def test_min_new_tokens_forces_length(marian_bundle):
    out = tandem("generate", "--bundle", str(marian_bundle), "--ids", "--max-new-tokens", "20",
                 "--min-new-tokens", "20", "5 6 1")  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()
    assert len(out.stdout.decode().split()) == 20


def test_bad_line_keeps_alignment_and_fails(marian_bundle):
    stdin = b"5 6 1\nnot numbers\n7 1\n"
    out = tandem("generate", "--bundle", str(marian_bundle), "--ids", "--max-new-tokens", "5", "-",
                 stdin=stdin)  # fmt: skip
    assert out.returncode == 1
    lines = out.stdout.decode().split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[0] and lines[2]
    assert "line 2: error: --ids input must be space-separated integers" in out.stderr.decode()


def test_errors_are_one_line_not_tracebacks(marian_bundle, tmp_path):
    cases = [
        (("generate", "--bundle", str(tmp_path / "none"), "x"), "no model bundle"),
        (("generate", "--bundle", str(marian_bundle), "hello"), "has no tokenizer"),
        (("generate", "--bundle", str(marian_bundle), "--ids", "--target", "fr", "5 1"),
         "unknown target language 'fr'"),
        (("generate", "--bundle", str(marian_bundle), "--ids", "--max-new-tokens", "0", "5 1"),
         "max_new_tokens must be in [1, 63]"),
        (("export", "--hf", str(tmp_path), "--out", str(tmp_path / "b")),
         "not a Hugging Face checkpoint"),
    ]  # fmt: skip
    for args, message in cases:
        out = tandem(*args)
        err = out.stderr.decode()
        assert out.returncode == 2, (args, err)
        assert message in err, (args, err)
        assert "Traceback" not in err


def test_generate_rejects_non_utf8_stdin(marian_bundle):
    out = tandem("generate", "--bundle", str(marian_bundle), "--ids", "-", stdin=b"5 \xff 1\n")
    assert out.returncode == 2
    assert "not valid UTF-8" in out.stderr.decode()


def test_export_and_profile_commands(hf_checkpoint, tmp_path):
    bundle = tmp_path / "bundle"
    out = tandem("export", "--hf", str(hf_checkpoint("marian")), "--out", str(bundle), "--int8")
    assert out.returncode == 0, out.stderr.decode()
    assert "fingerprint sha256:" in out.stdout.decode()
    profile = tmp_path / "profile.yaml"
    out = tandem("profile", "--bundle", str(bundle), "--out", str(profile), "--quick")
    assert out.returncode == 0, out.stderr.decode()
    data = yaml.safe_load(profile.read_text())
    assert data["format"] == "tandem-profile/1"
    assert data["model"]["quantization"] == "int8"
    assert all(p["ms"] > 0 for p in data["encoder_ms"] + data["decoder_step_ms"])
    assert {p["batch"] for p in data["decoder_step_ms"]} == {1, 8}
    assert data["peak_rss_mb"] > 0
    # Measured where RAPL can be read, else the documented default, and always said which.
    assert data["power_source"] in ("rapl", "default") and data["power_w"] >= 0
    if data["power_source"] == "default":
        assert data["power_w"] == DEFAULT_POWER_W
    assert Profile.from_dict(data).power_w == data["power_w"]


def test_profile_of_a_speech_bundle_prices_one_window(whisper_bundle, tmp_path):
    """A speech encoder takes one fixed window: one point, at the rows it outputs, which the
    policy reads as the source length of every window's upload and cloud decode."""
    from tandem.policy import Profile
    from tandem.runtime.seq2seq import Seq2Seq

    bundle = whisper_bundle("multi")
    profile = tmp_path / "profile.yaml"
    out = tandem("profile", "--bundle", str(bundle), "--out", str(profile), "--quick")
    assert out.returncode == 0, out.stderr.decode()
    data = yaml.safe_load(profile.read_text())
    manifest = Seq2Seq.load(bundle).manifest
    assert [p["src_len"] for p in data["encoder_ms"]] == [manifest.audio.n_frames // 2]
    assert all(p["ms"] > 0 for p in data["encoder_ms"] + data["decoder_step_ms"])
    loaded = Profile.from_dict(data, where=str(profile))
    assert loaded.hidden_size == manifest.dims.hidden_size


def test_every_command_module_imports_and_is_listed():
    """A command that cannot be imported is an error here, never a subcommand silently missing."""
    import importlib
    from pathlib import Path

    from tandem import cli

    on_disk = {
        p.stem
        for p in (Path(cli.__file__).parent / "commands").glob("*.py")
        if p.stem != "__init__"
    }
    assert set(cli.COMMANDS) == on_disk
    for name in cli.COMMANDS:
        assert callable(importlib.import_module(f"tandem.cli.commands.{name}").register)
    shown = cli.build_parser()._subparsers._group_actions[0].choices
    assert list(shown) == list(cli.COMMANDS)
