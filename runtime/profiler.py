"""``profile``: measure what a bundle costs on this machine, in the format the policy reads.

The routing policy and the simulator need per-machine costs — encoder ms vs source length and
decoder ms per step vs position and batch size. Measuring them here, with the same runtime that
serves requests, keeps the policy's predictions honest. Format (YAML, ``tandem-profile/1``)::

    format: tandem-profile/1
    model: {name, fingerprint, hidden_size, vocab_size, encoder_layers, decoder_layers}
    host: {description, cpu_count, intra_op_threads, onnxruntime}
    encoder_ms:       [{src_len, ms}]          # encoder + cross-cache init, batch 1
                                               # (speech: one window, at its output rows)
    decoder_step_ms:  [{batch, position, ms}]  # one step: every row advances one token
    part_bytes: {encoder, cache_init, decoder}
    peak_rss_mb: float
    power_w: float            # measured: the CPU packages' mean power during the runs (RAPL)
    power_source: rapl | default

``power_w`` is measured where Linux's RAPL counters can be read (``tandem.runtime.rapl``):
the energy the CPU packages used from the first profiled run to the last, over that time —
package power, so it includes the idle floor and any other process running meanwhile. Where
they cannot be read, ``power_source`` is ``default`` and the caller writes the documented
default (``tandem profile`` writes ``tandem.policy.energy.DEFAULT_POWER_W``).
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tandem.runtime import rapl
from tandem.runtime.decoding import GenerationParams
from tandem.runtime.seq2seq import Seq2Seq

FORMAT = "tandem-profile/1"


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: first runs allocate arenas
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 4)


def _cpu_description() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_profile(
    model: Seq2Seq,
    src_lens: tuple[int, ...] = (4, 8, 16, 32, 64),
    positions: tuple[int, ...] = (1, 16, 64, 128),
    batches: tuple[int, ...] = (1, 4, 16),
    repeats: int = 7,
    powercap: Path = rapl.POWERCAP,
) -> dict[str, Any]:
    """Measure and return the profile as a plain mapping (the caller writes it); ``powercap``
    is where the RAPL counters are read (Linux's powercap tree)."""
    m = model.manifest
    rng = np.random.default_rng(0)
    low = max(m.tokens.eos, m.tokens.pad, m.tokens.decoder_start) + 1
    vocab = min(
        m.dims.vocab_size, model.tokenizer.vocab_size if model.tokenizer else m.dims.vocab_size
    )
    src_lens = tuple(s for s in src_lens if s <= m.dims.max_source_length)
    positions = tuple(p for p in positions if p + 4 < m.dims.max_target_length)

    def source(n: int) -> list[int]:
        return [int(t) for t in rng.integers(low, vocab, size=n)]

    energy_before = rapl.read_energy(powercap)
    began = time.perf_counter()
    cache_init = model.bundle.sessions["cache_init"]
    if m.audio is not None:
        # A speech encoder takes one fixed window whatever was said: one point, at the rows it
        # outputs (the source length the policy prices an upload and a cloud decode at).
        features = (0.1 * rng.standard_normal((m.audio.n_mels, m.audio.n_frames))).astype(
            np.float32
        )
        hidden = model.encode_features(features)

        def encode_window():
            out = model.encode_features(features)
            cache_init.run(None, {"hidden_states": out[None]})

        encoder_ms = [{"src_len": int(hidden.shape[0]), "ms": _median_ms(encode_window, repeats)}]
    else:
        encoder_ms = []
        for n in src_lens:
            ids = source(n)

            def encode(ids=ids):
                out = model.encode(ids)
                cache_init.run(None, {"hidden_states": out[None]})

            encoder_ms.append({"src_len": n, "ms": _median_ms(encode, repeats)})
        hidden = model.encode(source(min(16, m.dims.max_source_length)))

    decoder_ms = []
    for batch_size in batches:
        for position in positions:
            batch = model.new_batch()
            for row in range(batch_size):
                params = GenerationParams(
                    max_new_tokens=position + repeats + 3,
                    min_new_tokens=position + repeats + 3,
                    prefix=tuple(source(position)) if position > 0 else (),
                )
                batch.add(row, hidden, params)
            times = []
            batch.step()  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                batch.step()
                times.append((time.perf_counter() - start) * 1000)
            decoder_ms.append(
                {
                    "batch": batch_size,
                    "position": position,
                    "ms": round(statistics.median(times), 4),
                }
            )
    power = _power_w(energy_before, rapl.read_energy(powercap), time.perf_counter() - began)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    profile = {
        "format": FORMAT,
        "model": {
            "name": m.name,
            "fingerprint": model.fingerprint,
            "hidden_size": m.dims.hidden_size,
            "vocab_size": m.dims.vocab_size,
            "encoder_layers": m.dims.encoder_layers,
            "decoder_layers": m.dims.decoder_layers,
            "quantization": m.quantization,
        },
        "host": {
            "description": _cpu_description(),
            "cpu_count": _cpu_count(),
            "intra_op_threads": model.bundle.session_config.intra_op_threads,
            "onnxruntime": ort.__version__,
        },
        "encoder_ms": encoder_ms,
        "decoder_step_ms": decoder_ms,
        "part_bytes": model.bundle.part_bytes(),
        "peak_rss_mb": round(rss_kib / 1024, 1),
    }
    if power is not None:
        profile["power_w"] = round(power, 3)
    profile["power_source"] = "rapl" if power is not None else "default"
    return profile


def _power_w(before: rapl.Reading | None, after: rapl.Reading | None, seconds: float):
    """Mean power between two readings, or None when either is missing."""
    if before is None or after is None or before.zones != after.zones or seconds <= 0:
        return None
    return rapl.joules_between(before, after) / seconds


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
