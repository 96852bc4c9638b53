"""The speech workload: one request per window, priced at the encoder output's real size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_sim_command import run_cli, traces_dir  # noqa: F401  (the module's fixture)

from tandem.errors import ConfigError
from tandem.policy import PolicyConfig, payload_bytes
from tandem.sim.runner import Scenario, make_draws, simulate
from tandem.sim.speech import PROMPT_TOKENS, SpeechWorkload, make_speech_workload


def test_windows_have_the_encoder_rows_and_reproducible_lengths():
    speech = SpeechWorkload(window_s=30.0, tokens_per_window=40.0)
    a = make_speech_workload(200, 0.5, np.random.default_rng(3), speech)
    b = make_speech_workload(200, 0.5, np.random.default_rng(3), speech)
    assert a == b
    assert {r.src_len for r in a.requests} == {1500}
    steps = np.array([r.steps for r in a.requests])
    assert steps.min() >= PROMPT_TOKENS + 1
    assert abs(steps.mean() - (40 + PROMPT_TOKENS + 1)) < 2.0
    assert SpeechWorkload(window_s=10.0).src_len == 500
    with pytest.raises(ConfigError, match="--window-s must be in"):
        SpeechWorkload(window_s=31)
    with pytest.raises(ConfigError, match="--hidden-size must be >= 1"):
        SpeechWorkload(hidden_size=0)


def test_the_simulator_uploads_the_real_window_size(trace, device_profile, cloud_profile):
    speech = SpeechWorkload(hidden_size=512)
    scenario = Scenario(rate_per_s=0.2)
    draws = make_draws(30, scenario, seed=1, workload_maker=speech.maker())
    cfg = PolicyConfig(codec="fp16")
    device = speech.profile(device_profile.scaled(scenario.device_speed_factor))
    result = simulate(trace, "always_cloud", draws, scenario, device, cloud_profile, cfg)
    window = payload_bytes(1500, 512, "fp16", cfg.payload_overhead_bytes)
    assert window == 1500 * 512 * 2 + cfg.payload_overhead_bytes
    assert result.bytes_up.max() == window  # a completed call uploads the whole window


def test_sim_run_reports_the_speech_workload_and_leaves_text_as_it_was(
    traces_dir,  # noqa: F811
    tmp_path,
    capsys,
):
    assert run_cli(traces_dir, tmp_path / "text", "--no-plots") == 0
    text = json.loads((tmp_path / "text" / "scenario.json").read_text())
    assert "workload" not in text
    capsys.readouterr()
    assert run_cli(traces_dir, tmp_path / "speech", "--no-plots", "--workload", "speech",
                   "--hidden-size", "512", "--tokens-per-window", "30") == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "speech workload: 30 s windows (1500 x 512 hidden states)" in printed
    meta = json.loads((tmp_path / "speech" / "scenario.json").read_text())
    assert meta["workload"]["kind"] == "speech" and meta["workload"]["src_len"] == 1500
    rows = json.loads((tmp_path / "speech" / "summary.json").read_text())
    assert (
        rows
        and rows[0].keys() == json.loads((tmp_path / "text" / "summary.json").read_text())[0].keys()
    )
