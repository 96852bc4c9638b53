"""Shared fixtures: tiny exported bundles, built once per test run (no downloads)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import hf_models  # noqa: E402


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """arch → directory of a tiny random-weight Hugging Face checkpoint."""
    cache: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = hf_models.build(arch, tmp_path_factory.mktemp(f"hf_{arch}"))
        return cache[arch]

    return make


@pytest.fixture(scope="session")
def exported(hf_checkpoint, tmp_path_factory):
    """(arch, int8) → exported bundle directory."""
    from tandem.runtime.export import export_hf

    cache: dict[tuple[str, bool], Path] = {}

    def make(arch: str, int8: bool = False) -> Path:
        key = (arch, int8)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"bundle_{arch}{'_int8' if int8 else ''}")
            export_hf(hf_checkpoint(arch), out, int8=int8, overwrite=True)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def marian_bundle(exported) -> Path:
    return exported("marian")


@pytest.fixture(scope="session")
def text_bundle(tmp_path_factory) -> Path:
    """A tiny Marian bundle with a word tokenizer and target languages en/fr (text in, text out)."""
    from tandem.runtime.export import export_hf

    hf = hf_models.build("marian", tmp_path_factory.mktemp("hf_text"), seed=1)
    hf_models.write_word_tokenizer(hf / "tokenizer.json")
    out = tmp_path_factory.mktemp("bundle_text")
    export_hf(hf, out, overwrite=True)
    return out


@pytest.fixture(scope="session")
def whisper_checkpoint(tmp_path_factory):
    """kind → a tiny random-weight Whisper checkpoint: ``multi``, ``en`` (English-only),
    ``tied`` (transformers' own init, tied embeddings), ``eos`` (EOS made likely),
    ``timestamps`` (timestamp tokens made likely)."""
    cache: dict[str, Path] = {}
    kinds = {
        "multi": {},
        "en": {"multilingual": False, "seed": 1},
        "tied": {"perturb": False, "seed": 2},
        "eos": {"seed": 3, "eos_boost": 6.0},
        "timestamps": {"seed": 4, "timestamp_boost": 1.6},
    }

    def make(kind: str) -> Path:
        if kind not in cache:
            out = tmp_path_factory.mktemp(f"hf_whisper_{kind}")
            cache[kind] = hf_models.build_whisper(out, **kinds[kind])
        return cache[kind]

    return make


@pytest.fixture(scope="session")
def whisper_bundle(whisper_checkpoint, tmp_path_factory):
    """(kind, int8) → exported Whisper bundle directory."""
    from tandem.runtime.export import export_hf

    cache: dict[tuple[str, bool], Path] = {}

    def make(kind: str = "multi", int8: bool = False) -> Path:
        if (kind, int8) not in cache:
            out = tmp_path_factory.mktemp(f"bundle_whisper_{kind}{'_int8' if int8 else ''}")
            export_hf(whisper_checkpoint(kind), out, int8=int8, overwrite=True)
            cache[(kind, int8)] = out
        return cache[(kind, int8)]

    return make


@pytest.fixture(scope="session")
def whisper_text_bundle(whisper_checkpoint, tmp_path_factory) -> Path:
    """The ``multi`` Whisper bundle with a tokenizer, so it transcribes to text too."""
    import shutil

    from tandem.runtime.export import export_hf

    hf = tmp_path_factory.mktemp("hf_whisper_text") / "ckpt"
    shutil.copytree(whisper_checkpoint("multi"), hf)
    hf_models.write_whisper_tokenizer(hf / "tokenizer.json")
    out = tmp_path_factory.mktemp("bundle_whisper_text")
    export_hf(hf, out, overwrite=True)
    return out
