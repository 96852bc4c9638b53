"""Real cloud replicas and real edge agents on loopback, for the agent's tests."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tandem.cloud.config import parse_cloud_config
from tandem.cloud.server import create_server
from tandem.edge.agent import Agent
from tandem.edge.config import BreakerSettings, CloudSettings, EdgeConfig, validate
from tandem.policy import PolicyConfig
from tandem.runtime.seq2seq import Seq2Seq


@pytest.fixture
def cloud_factory(text_bundle):
    """Start real cloud replicas on 127.0.0.1:0; all are stopped after the test."""
    servers = []

    def start(model: Seq2Seq | None = None, port: int = 0):
        config = parse_cloud_config({"listen": f"127.0.0.1:{port}", "bundles": [str(text_bundle)]})
        models = [model] if model is not None else None
        server, bound = create_server(config, models=models)
        server.start()
        servers.append(server)
        return server, bound

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def agent_factory(text_bundle, tmp_path):
    agents = []

    def make(
        port: int | None, policy: str = "always_cloud", model: Seq2Seq | None = None, **cloud_kwargs
    ) -> Agent:
        """An agent on ``port`` (None: no cloud); ``model``: its own (e.g. a slow one)."""
        cloud = CloudSettings(
            enabled=port is not None,
            addresses=(f"127.0.0.1:{port or 1}",),
            ping_interval_s=cloud_kwargs.pop("ping_interval_s", 0),
            first_token_timeout_s=cloud_kwargs.pop("first_token_timeout_s", 2.0),
            codec=cloud_kwargs.pop("codec", "fp32"),
            breaker=BreakerSettings(
                failure_threshold=cloud_kwargs.pop("failure_threshold", 2),
                reset_timeout_s=cloud_kwargs.pop("reset_timeout_s", 0.5),
            ),
            **cloud_kwargs,
        )
        config = validate(
            EdgeConfig(
                bundle=str(text_bundle),
                socket=str(tmp_path / f"edge{len(agents)}.sock"),
                cloud=cloud,
                policy=PolicyConfig(policy=policy),
            )
        )
        agent = Agent(config, model=model)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.close()


def replace(config, **kwargs):
    return dataclasses.replace(config, **kwargs)
