"""Bundle loading: every kind of broken bundle fails with one precise BundleError."""

from __future__ import annotations

import shutil

import onnx
import pytest
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers

from tandem.errors import BundleError
from tandem.runtime.bundle import load_bundle
from tandem.runtime.options import SessionConfig
from tandem.runtime.seq2seq import Seq2Seq


@pytest.fixture
def bundle(marian_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(marian_bundle, copy)
    return copy


def _edit_manifest(path, fn):
    data = yaml.safe_load((path / "bundle.yaml").read_text())
    fn(data)
    (path / "bundle.yaml").write_text(yaml.safe_dump(data))


def test_valid_bundle_loads_with_fingerprint(bundle):
    loaded = load_bundle(bundle)
    assert loaded.fingerprint.startswith("sha256:")
    assert loaded.fingerprint == loaded.manifest.fingerprint
    assert set(loaded.part_bytes()) == {"encoder", "cache_init", "decoder"}


def test_missing_part(bundle):
    (bundle / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match="part 'decoder' file decoder.onnx is missing"):
        load_bundle(bundle)


def test_extra_part(bundle):
    shutil.copyfile(bundle / "decoder.onnx", bundle / "decoder_old.onnx")
    with pytest.raises(BundleError, match=r"extra ONNX file\(s\) \['decoder_old.onnx'\]"):
        load_bundle(bundle)


def test_unknown_manifest_key(bundle):
    _edit_manifest(bundle, lambda d: d.update(colour="blue"))
    with pytest.raises(BundleError, match=r"unknown key\(s\) \['colour'\]"):
        load_bundle(bundle)


def test_unknown_dims_key_and_missing_key(bundle):
    _edit_manifest(bundle, lambda d: d["dims"].update(depth=3))
    with pytest.raises(BundleError, match=r"unknown key\(s\) in 'dims': \['depth'\]"):
        load_bundle(bundle)
    _edit_manifest(bundle, lambda d: (d["dims"].pop("depth"), d.pop("opset")))
    with pytest.raises(BundleError, match="missing key 'opset'"):
        load_bundle(bundle)


def test_io_names_that_do_not_match_the_manifest(bundle):
    shutil.copyfile(bundle / "encoder.onnx", bundle / "decoder.onnx")
    _edit_manifest(bundle, lambda d: d.pop("fingerprint"))  # decoder is not hashed
    with pytest.raises(BundleError, match="part 'decoder' inputs do not match the manifest"):
        load_bundle(bundle)


def test_layer_count_mismatch(bundle):
    _edit_manifest(bundle, lambda d: (d["dims"].update(decoder_layers=3), d.pop("fingerprint")))
    with pytest.raises(BundleError, match="missing .*cross_key_2"):
        load_bundle(bundle)


def test_unsupported_opset(bundle):
    model = onnx.load(str(bundle / "cache_init.onnx"))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 99
    onnx.save(model, str(bundle / "cache_init.onnx"))
    with pytest.raises(BundleError, match="part 'cache_init' uses opset 99; supported are"):
        load_bundle(bundle)


def test_corrupt_and_truncated_onnx(bundle):
    data = (bundle / "decoder.onnx").read_bytes()
    (bundle / "decoder.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="part 'decoder'"):
        load_bundle(bundle)
    (bundle / "decoder.onnx").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(BundleError, match="part 'decoder'"):
        load_bundle(bundle)


def test_changed_encoder_breaks_the_fingerprint(bundle, exported):
    shutil.copyfile(exported("marian", int8=True) / "encoder.onnx", bundle / "encoder.onnx")
    with pytest.raises(BundleError, match="fingerprint .* does not match its contents"):
        load_bundle(bundle)


def test_manifest_change_changes_the_fingerprint(bundle, marian_bundle):
    _edit_manifest(bundle, lambda d: (d.pop("fingerprint"), d.update(name="other")))
    assert load_bundle(bundle).fingerprint != load_bundle(marian_bundle).fingerprint


def _write_tokenizer(path, vocab_size):
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t2"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def test_tokenizer_vocabulary_mismatch(bundle):
    _write_tokenizer(bundle / "tokenizer.json", 500)
    _edit_manifest(bundle, lambda d: (d.pop("fingerprint"), d.update(tokenizer="tokenizer.json")))
    with pytest.raises(BundleError, match="500 tokens, more than the model's vocabulary"):
        load_bundle(bundle)
    _write_tokenizer(bundle / "tokenizer.json", 50)
    _edit_manifest(bundle, lambda d: d.update(tokenizer_vocab_size=60))
    with pytest.raises(BundleError, match="has 50 tokens but the manifest expects 60"):
        load_bundle(bundle)


def test_tokenizer_round_trip_through_bundle(bundle):
    _write_tokenizer(bundle / "tokenizer.json", 90)
    _edit_manifest(
        bundle,
        lambda d: (
            d.pop("fingerprint"),
            d.update(tokenizer="tokenizer.json", tokenizer_vocab_size=90, languages={"xx": 7}),
        ),
    )
    model = Seq2Seq.load(bundle)
    out = model.generate("t5 t9 t1", target="xx", max_new_tokens=8)
    assert out.ids[0] == 7
    assert isinstance(out.text, str)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="has no bundle.yaml"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.yaml").write_text("a: [unclosed")
    with pytest.raises(BundleError, match="not valid YAML"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.yaml").write_text("format: tandem-bundle/0\n")
    with pytest.raises(BundleError, match="format must be 'tandem-bundle/1'"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("allow", [True, False])
def test_only_the_decoder_may_spin(bundle, allow):
    """Encoder and cache initializer run once per request: their threads never spin into the
    decoder steps that follow; the decoder follows ``allow_spinning``."""
    loaded = load_bundle(bundle, SessionConfig(allow_spinning=allow))
    spin = {
        part: session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning"
        )
        for part, session in loaded.sessions.items()
    }
    assert spin == {"encoder": "0", "cache_init": "0", "decoder": "1" if allow else "0"}
