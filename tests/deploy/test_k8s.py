"""deploy/k8s against Kubernetes' own schemas, and the kustomization against the files it names.

``tests/cloud/test_deploy.py`` checks that the manifests agree with the cloud config; this file
checks that Kubernetes would accept them at all: every object ``kubectl apply -k deploy/k8s``
creates is validated with ``kubernetes-validate --strict`` (unknown fields are errors) for the
oldest Kubernetes we support and the newest the validator knows, the ConfigMap the generator
makes included, and every file the kustomization references exists.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))


def generator_inputs() -> list[str]:
    return [
        f for gen in kustomization().get("configMapGenerator", []) for f in gen.get("files", [])
    ]


def resource_files() -> list[str]:
    return list(kustomization()["resources"])


def test_the_kustomization_references_only_files_that_exist():
    named = resource_files() + generator_inputs()
    assert named, "kustomization.yaml lists nothing"
    assert [f for f in named if not (K8S / f).is_file()] == []


def test_every_yaml_file_is_a_resource_or_a_generator_input():
    # A manifest added to the folder but not to the kustomization would never be applied.
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == set(resource_files()) | set(generator_inputs())


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("file", resource_files())
def test_each_object_passes_strict_validation(file, version):
    docs = [d for d in yaml.safe_load_all((K8S / file).read_text(encoding="utf-8")) if d]
    assert docs, file
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError


@pytest.mark.parametrize("version", VERSIONS)
def test_the_generated_config_maps_pass_strict_validation(version):
    for gen in kustomization()["configMapGenerator"]:
        data = {f: (K8S / f).read_text(encoding="utf-8") for f in gen["files"]}
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}}
        kubernetes_validate.validate({**config_map, "data": data}, version, strict=True)


def test_the_documented_command_passes():
    # docs/deployment.md gives this command; run it as written (from the repository root).
    files = [f"deploy/k8s/{f}" for f in resource_files()]
    out = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-k", "1.30.0", *files],
        cwd=K8S.parents[1], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("passed") == len(files), out.stdout


def test_a_wrong_field_is_caught():
    # The validator really is strict: a misspelt field fails, so the passes above mean something.
    doc = yaml.safe_load((K8S / "service.yaml").read_text(encoding="utf-8"))
    doc["spec"]["clusterIp"] = "None"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
