"""Soak verdicts: growth between the start and the end of the steady state, warm-up excluded."""

from __future__ import annotations

import os

import pytest

from tandem.emulate.soak import Sample, growth, sample

MB = 2**20


def series(rss_mb, fds=None, threads=None, step_s=10.0):
    fds = fds or [20] * len(rss_mb)
    threads = threads or [12] * len(rss_mb)
    return [
        Sample(i * step_s, int(r * MB), f, t)
        for i, (r, f, t) in enumerate(zip(rss_mb, fds, threads, strict=True))
    ]


def test_warmup_growth_is_excluded_and_flat_passes():
    # Caches fill in the first 30 s (100 -> 150 MB), then flat with noise.
    samples = series([100, 130, 150, 151, 149, 150, 152, 150, 149, 151])
    g = growth(samples, warmup_s=30)
    assert g.samples == 7 and abs(g.rss) < 0.01 and g.fds == 0 and g.threads == 0
    assert g.ok
    assert not growth(samples, warmup_s=0).ok  # counting the warm-up would fail it


def test_steady_leaks_fail():
    leak = series([150 + 3 * i for i in range(10)])  # +3 MB per sample: +12 % end vs start
    assert growth(leak, 0).rss > 0.10 and not growth(leak, 0).ok
    fds = series([150] * 8, fds=[20, 20, 20, 21, 22, 23, 23, 24])
    assert growth(fds, 0).fds == 3 and not growth(fds, 0).ok
    threads = series([150] * 8, threads=[12, 12, 12, 12, 13, 13, 13, 13])
    assert growth(threads, 0).threads == 1 and not growth(threads, 0).ok


def test_one_outlier_sample_does_not_decide():
    samples = series([150, 150, 150, 150, 150, 150, 400, 150], fds=[20] * 6 + [90, 20])
    assert growth(samples, 0).ok


def test_too_few_samples_after_warmup_is_an_error():
    with pytest.raises(ValueError, match="need at least 6 samples"):
        growth(series([100] * 8), warmup_s=30)


def test_sample_reads_a_live_process():
    s = sample(os.getpid(), 1.5)
    assert s.t_s == 1.5 and s.rss_bytes > 10 * MB and s.fds > 0 and s.threads >= 1
