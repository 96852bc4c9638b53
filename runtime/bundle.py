"""Loading a model bundle: manifest + ONNX parts + tokenizer, validated as a whole.

Every check runs at load time and fails with one precise message, so a bad bundle is found
when a daemon starts rather than as a shape error deep inside onnxruntime on the first request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from tandem.errors import BundleError
from tandem.runtime.fingerprint import compute_fingerprint
from tandem.runtime.manifest import PART_NAMES, Manifest, parse_manifest, part_io
from tandem.runtime.options import SessionConfig
from tandem.runtime.tokenizer import Tokenizer, load_tokenizer
from tandem.yamlfile import read_yaml

log = logging.getLogger(__name__)

MANIFEST_FILE = "bundle.yaml"
MIN_OPSET = 11
#: The newest default-domain opset this onnxruntime build executes.
MAX_OPSET = 22


@dataclass
class ModelBundle:
    """A loaded bundle: its manifest, one session per part, and the tokenizer if it has one."""

    path: Path
    manifest: Manifest
    fingerprint: str
    sessions: dict[str, ort.InferenceSession]
    tokenizer: Tokenizer | None
    session_config: SessionConfig

    def part_bytes(self) -> dict[str, int]:
        return {p: (self.path / f).stat().st_size for p, f in self.manifest.parts.items()}


def read_manifest(path: Path) -> Manifest:
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise BundleError(f"model bundle {path} is not a directory")
    if not manifest_path.is_file():
        raise BundleError(f"model bundle {path} has no {MANIFEST_FILE}")
    return parse_manifest(read_yaml(manifest_path, "bundle manifest", error=BundleError))


def _check_files(path: Path, manifest: Manifest) -> None:
    for part, file in manifest.parts.items():
        if not (path / file).is_file():
            raise BundleError(f"model bundle {path}: part '{part}' file {file} is missing")
    declared = set(manifest.parts.values())
    extra = sorted(p.name for p in path.glob("*.onnx") if p.name not in declared)
    if extra:
        raise BundleError(
            f"model bundle {path}: extra ONNX file(s) {extra} not listed under parts "
            "(a stale part from another export would be silently ignored)"
        )
    if manifest.tokenizer and not (path / manifest.tokenizer).is_file():
        raise BundleError(f"model bundle {path}: tokenizer file {manifest.tokenizer} is missing")


def _check_opset(path: Path, part: str, file: str) -> int:
    try:
        model = onnx.load(str(path / file), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for corrupt files
        raise BundleError(
            f"model bundle {path}: part '{part}' ({file}) is not a valid ONNX file: {exc}"
        ) from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        raise BundleError(
            f"model bundle {path}: part '{part}' uses opset {opset}; supported are "
            f"{MIN_OPSET}..{MAX_OPSET}"
        )
    return opset


def _check_io(path: Path, part: str, session: ort.InferenceSession, manifest: Manifest) -> None:
    want_in, want_out = part_io(manifest)[part]
    for kind, want, got in (
        ("input", want_in, session.get_inputs()),
        ("output", want_out, session.get_outputs()),
    ):
        have = {a.name: len(a.shape) for a in got}
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        if missing or extra:
            raise BundleError(
                f"model bundle {path}: part '{part}' {kind}s do not match the manifest "
                f"(missing {missing}, unexpected {extra})"
            )
        for name, rank in want.items():
            if have[name] != rank:
                raise BundleError(
                    f"model bundle {path}: part '{part}' {kind} '{name}' has rank {have[name]}, "
                    f"manifest layout needs {rank}"
                )
    audio = manifest.audio
    if part == "encoder" and audio is not None:
        # The window is baked into the graph; the manifest's front end must produce it.
        shape = next(a.shape for a in session.get_inputs() if a.name == "input_features")
        if list(shape[1:]) != [audio.n_mels, audio.n_frames]:
            raise BundleError(
                f"model bundle {path}: encoder takes input_features {shape}, but bundle.yaml's "
                f"audio gives (batch, {audio.n_mels}, {audio.n_frames})"
            )


def load_bundle(path: str | Path, session_config: SessionConfig | None = None) -> ModelBundle:
    """Load and validate a bundle directory; raises BundleError naming the first problem."""
    path = Path(path)
    session_config = session_config or SessionConfig()
    manifest = read_manifest(path)
    _check_files(path, manifest)
    fingerprint = compute_fingerprint(path / manifest.parts["encoder"], manifest.hashed_dict())
    if manifest.fingerprint is not None and manifest.fingerprint != fingerprint:
        raise BundleError(
            f"model bundle {path}: fingerprint in bundle.yaml ({manifest.fingerprint[:19]}…) does "
            f"not match its contents ({fingerprint[:19]}…); the files were changed after export"
        )
    sessions: dict[str, ort.InferenceSession] = {}
    for part in PART_NAMES:
        # Only the decoder runs back to back, so only its threads may spin (SessionConfig).
        options = session_config.to_ort(spin=None if part == "decoder" else False)
        file = manifest.parts[part]
        _check_opset(path, part, file)
        try:
            session = ort.InferenceSession(
                str(path / file), sess_options=options, providers=list(session_config.providers)
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(
                f"model bundle {path}: onnxruntime cannot load part '{part}' ({file}): {exc}"
            ) from exc
        _check_io(path, part, session, manifest)
        sessions[part] = session
    tokenizer = None
    if manifest.tokenizer:
        tokenizer = load_tokenizer(path / manifest.tokenizer, manifest)
    log.info("bundle loaded", extra={"bundle": str(path), "fingerprint": fingerprint})
    return ModelBundle(path, manifest, fingerprint, sessions, tokenizer, session_config)
