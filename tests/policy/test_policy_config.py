"""PolicyConfig: validated once, unknown keys rejected; payload sizes per codec."""

from __future__ import annotations

import pytest

from tandem.errors import ConfigError
from tandem.policy import PolicyConfig, payload_bytes


def test_defaults_are_valid_and_nested_sections_load():
    cfg = PolicyConfig.from_dict({"policy": "threshold", "estimators": {"window_s": 30}})
    assert cfg.policy == "threshold" and cfg.estimators.window_s == 30
    assert PolicyConfig.from_dict(None) == PolicyConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"polcy": "cost_model"}, r"policy: unknown key polcy \(did you mean policy\?\)"),
        ({"estimators": {"windw_s": 1}}, r"unknown key estimators\.windw_s \(did you mean"),
        ({"policy": "fastest"}, "policy must be one of"),
        ({"codec": "bf16"}, "codec must be one of"),
        ({"hedge_factor": 0.5}, r"hedge_factor must be >= 1, got 0\.5"),
        ({"length": {"forget": 0}}, r"policy: length\.forget must be in \(0, 1\], got 0"),
        ({"hysteresis": "a lot"}, "policy: hysteresis must be a number, got 'a lot'"),
        ({"estimators": []}, r"policy: estimators must be a mapping of keys, got \[\]"),
        ({"estimators": {"max_samples": 2.5}}, "estimators.max_samples must be an integer"),
        ({"hedge": "yes"}, "hedge must be true or false, got 'yes'"),
    ],
)
def test_bad_config_raises_config_error_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        PolicyConfig.from_dict(data)


def test_payload_bytes_per_codec():
    # 10 tokens x 256 hidden: fp32 4 B, fp16 2 B, int8 1 B + a 4 B scale per token.
    assert payload_bytes(10, 256, "fp32") == 10240
    assert payload_bytes(10, 256, "fp16") == 5120
    assert payload_bytes(10, 256, "int8") == 2600
    assert payload_bytes(10, 256, "int8", overhead_bytes=160) == 2760
