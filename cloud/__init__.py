"""The cloud decoder service: tandem.v1.Decoder over continuous batching of model bundles.

``tandem cloud serve`` is the command; ``create_server(config)`` builds a replica in-process
(tests, benchmarks, embedding). See ``docs/configuration.md`` for configuration and
``docs/cloud-contract.md`` for the client contract (status codes, metadata, finish reasons).
"""

from __future__ import annotations

from tandem.cloud.config import CloudConfig, load_cloud_config, parse_cloud_config
from tandem.cloud.server import CloudServer, create_server

__all__ = ["CloudConfig", "CloudServer", "create_server", "load_cloud_config", "parse_cloud_config"]
