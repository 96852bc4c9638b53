"""The shipped Dockerfile and Kubernetes manifests agree with the config they deploy."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tandem.cloud.config import load_cloud_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"


def _resources() -> dict[str, dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    docs = {}
    for file in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / file).read_text(encoding="utf-8")):
            docs[doc["kind"]] = doc
    return docs


def test_manifests_parse_and_match_the_config():
    config = load_cloud_config(K8S / "cloud.yaml")  # validates every key
    assert config.reflection is False, "no service listing on the public port by default"
    docs = _resources()
    assert {"Deployment", "Service", "PodDisruptionBudget"} <= set(docs)
    generated = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    (config_map,) = generated["configMapGenerator"]
    assert config_map["files"] == ["cloud.yaml"]

    pod = docs["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == config.listen.port
    assert ports["health"] == config.health_listen.port
    assert ports["metrics"] == config.metrics_listen.port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(config.metrics_listen.port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == config.health_listen.port, probe
    assert container["readinessProbe"]["grpc"]["service"] == "tandem.v1.Decoder"

    service = docs["Service"]["spec"]
    assert service["clusterIP"] == "None", "client-side balancing needs a headless Service"
    (port,) = service["ports"]
    assert port["port"] == config.listen.port and port["targetPort"] == "grpc"
    labels = pod["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["selector"].items())
    assert all(
        labels[k] == v for k, v in docs["Deployment"]["spec"]["selector"]["matchLabels"].items()
    )

    # Graceful termination: preStop sleep + drain must fit before SIGKILL.
    sleep_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > sleep_s + config.grace_period_s
    # Non-root, and the config's files come from the mounted volumes and Secrets.
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert config.tls.cert_file.startswith(mounts["tls"] + "/")
    assert mounts["config"] == container["args"][container["args"].index("--config") + 1]
    env = {e["name"] for e in container["env"]}
    assert config.auth.tokens_env in env
    # ONNX Runtime threads match the CPU the pod is given.
    assert config.session.intra_op_threads == int(container["resources"]["requests"]["cpu"])


def test_dockerfile_runs_non_root_with_a_grpc_health_check():
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    config = load_cloud_config(K8S / "cloud.yaml")
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    check = re.search(r"^HEALTHCHECK .*\n?.*CMD (.*)$", text, re.M)
    assert check and "tandem cloud health" in check[1]
    # The check's address defaults to cloud.yaml's health port (tests/deploy runs the image).
    assert "$TANDEM_HEALTH_ADDRESS" in check[1]
    default = re.search(r"TANDEM_HEALTH_ADDRESS=(\S+)", text)
    assert default and default[1] == f"127.0.0.1:{config.health_listen.port}"
    exposed = {int(p) for p in re.search(r"^EXPOSE (.*)$", text, re.M)[1].split()}
    assert {config.listen.port, config.health_listen.port, config.metrics_listen.port} <= exposed
    assert "COPY deploy/k8s/cloud.yaml /etc/tandem/cloud.yaml" in text
