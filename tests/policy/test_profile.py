"""Profile: parsing the tandem-profile/1 format and interpolating costs."""

from __future__ import annotations

import copy

import pytest

from tandem.errors import ConfigError
from tandem.policy import Profile

DOC = {
    "format": "tandem-profile/1",
    "model": {"name": "m", "fingerprint": "sha256:x", "hidden_size": 256, "vocab_size": 1000},
    "host": {"description": "test host", "cpu_count": 2},
    "encoder_ms": [{"src_len": 4, "ms": 1.0}, {"src_len": 64, "ms": 4.0}],
    "decoder_step_ms": [
        {"batch": 1, "position": 1, "ms": 1.0},
        {"batch": 1, "position": 101, "ms": 2.0},
        {"batch": 8, "position": 1, "ms": 3.0},
        {"batch": 8, "position": 101, "ms": 5.0},
    ],
    "part_bytes": {"encoder": 0, "cache_init": 0, "decoder": 0},
    "peak_rss_mb": 0.0,
}


def test_parses_and_interpolates_linearly_with_clamped_ends():
    p = Profile.from_dict(DOC)
    assert p.hidden_size == 256 and p.description == "test host"
    assert p.encoder_ms(4) == 1.0
    assert p.encoder_ms(34) == pytest.approx(2.5)
    assert p.encoder_ms(1) == 1.0 and p.encoder_ms(1000) == 4.0  # clamped, not extrapolated
    assert p.step_ms(1, 51) == pytest.approx(1.5)
    assert p.step_ms(8, 1) == 3.0
    assert p.step_ms(4.5, 1) == pytest.approx(2.0)  # halfway between batch 1 and 8
    assert p.step_ms(32, 500) == 5.0


def test_decode_ms_sums_the_steps_of_each_position():
    p = Profile.from_dict(DOC)
    expected = sum(p.step_ms(1, k) for k in range(1, 11))
    assert p.decode_ms(10) == pytest.approx(expected)
    assert p.decode_ms(0) == 0.0
    # Past the last measured position every step costs the last value.
    assert p.decode_ms(150) == pytest.approx(p.decode_ms(101) + 49 * 2.0)
    assert p.decode_ms(10.5) == pytest.approx((p.decode_ms(10) + p.decode_ms(11)) / 2)
    assert p.decode_ms(10, batch=8) > p.decode_ms(10, batch=1)


def test_scaled_multiplies_every_time():
    p = Profile.from_dict(DOC)
    q = p.scaled(4.0)
    assert q.encoder_ms(30) == pytest.approx(4 * p.encoder_ms(30))
    assert q.decode_ms(37, batch=8) == pytest.approx(4 * p.decode_ms(37, batch=8))
    with pytest.raises(ConfigError):
        p.scaled(0)
    r = Profile.from_dict({**DOC, "request_overhead_ms": 1.5})
    assert r.request_overhead_ms == 1.5 and r.scaled(2.0).request_overhead_ms == 3.0


def test_request_overhead_is_optional_and_zero_by_default():
    assert Profile.from_dict(DOC).request_overhead_ms == 0.0


def test_race_overhead_is_optional_zero_by_default_and_scales():
    assert Profile.from_dict(DOC).race_overhead_ms == 0.0
    r = Profile.from_dict({**DOC, "race_overhead_ms": 2.0})
    assert r.race_overhead_ms == 2.0 and r.scaled(3.0).race_overhead_ms == 6.0


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("format",), "tandem-profile/2", "format"),
        (("model", "hidden_size"), "wide", "hidden_size"),
        (("encoder_ms",), [], "encoder_ms"),
        (("decoder_step_ms", 0, "ms"), -1.0, "decoder point"),
        (("decoder_step_ms", 0), {"batch": 1, "ms": 1.0}, r"decoder_step_ms\[0\]"),
        (("extra",), 1, "unknown keys"),
        (("request_overhead_ms",), "fast", "request_overhead_ms must be a number"),
        (("request_overhead_ms",), -1.0, "request_overhead_ms must be a finite number >= 0"),
        (("race_overhead_ms",), "slow", "race_overhead_ms must be a number"),
        (("race_overhead_ms",), float("inf"), "race_overhead_ms must be a finite number >= 0"),
    ],
)
def test_invalid_documents_raise_config_error(path, value, message):
    doc = copy.deepcopy(DOC)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        Profile.from_dict(doc)


def test_shipped_profiles_describe_the_default_model(device, cloud):
    assert cloud.hidden_size == device.hidden_size == 256
    assert 0.5 < cloud.step_ms(1, 1) < 5
    # The default device is several times slower per token than the cloud at its batch.
    assert device.decode_ms(20) > 3 * cloud.decode_ms(20, batch=4)
