"""The shipped default model works with no arguments, as the README promises."""

from __future__ import annotations

import json
import subprocess
import sys

from num2words import num2words

from tandem.defaults import bundle_path
from tandem.runtime.seq2seq import Seq2Seq


def tandem(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli", *args], input=stdin, capture_output=True, timeout=600
    )


def test_generate_with_no_bundle_argument():
    out = tandem("generate", "1984 42", "--target", "fr")
    assert out.returncode == 0, out.stderr.decode()
    assert (
        out.stdout.decode().strip() == f"{num2words(1984, lang='fr')}, {num2words(42, lang='fr')}"
    )


def test_generate_reads_stdin_one_output_per_line():
    lines = ["7", "1000 3", "123456789 42 0 9"]
    out = tandem("generate", "--target", "de", "-", stdin=("\n".join(lines) + "\n").encode())
    assert out.returncode == 0, out.stderr.decode()
    want = [", ".join(num2words(int(n), lang="de") for n in line.split()) for line in lines]
    assert out.stdout.decode().splitlines() == want


def test_out_of_domain_input_is_bounded_and_flagged():
    out = tandem("generate", "--target", "en", "--max-new-tokens", "20", "hello there")
    assert out.returncode == 0
    assert "outside the model's domain" in out.stderr.decode()
    model = Seq2Seq.load(bundle_path())
    assert len(model.generate("9" * 60, target="en", max_new_tokens=20).ids) <= 20


def test_both_shipped_bundles_load_and_differ_in_fingerprint():
    fp32, int8 = (
        Seq2Seq.load(bundle_path("verbalizer")),
        Seq2Seq.load(bundle_path("verbalizer-int8")),
    )
    assert fp32.manifest.quantization == "none" and int8.manifest.quantization == "int8"
    assert set(fp32.manifest.languages) >= {"en", "fr", "de", "es"}
    assert fp32.fingerprint != int8.fingerprint


def test_demo_answers_everything_with_the_cloud_killed_halfway():
    out = tandem("demo", "--requests", "9", "--json")
    assert out.returncode == 0, out.stdout.decode()[-3000:] + out.stderr.decode()[-3000:]
    summary = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert summary["requests"] == summary["answered"] == 9
    assert summary["mismatches"] == 0
    assert summary["cloud"] >= 1 and summary["local"] >= 1
    assert summary["cloud_kills"] == 1
