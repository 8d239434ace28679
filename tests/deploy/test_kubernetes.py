"""deploy/kubernetes: overlays that render, validate offline against Kubernetes' schemas
(kubernetes-validate --strict) and carry the probes, budgets, autoscaling and config they promise."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_support import REPO

from streamgate.common.config import config_from_tree

KUBE = REPO / "deploy" / "kubernetes"
VALIDATE = str(Path(sys.executable).parent / "kubernetes-validate")
KUBECTL = shutil.which("kubectl")
needs_kustomize = pytest.mark.skipif(KUBECTL is None, reason="no kubectl on PATH (its built-in kustomize "
                                     "renders the overlays); the base manifests are still validated")


def validate(text: str) -> None:
    result = subprocess.run([VALIDATE, "--strict", "--quiet", "/dev/stdin"], input=text, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def render(overlay: str) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(KUBE / "overlays" / overlay)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    validate(result.stdout)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_the_base_manifests_validate_one_by_one() -> None:
    files = [p for p in (KUBE / "base").glob("*.yaml") if p.name not in ("kustomization.yaml", "config.yaml")]
    assert len(files) >= 5
    for path in files:
        validate(path.read_text())


def test_the_validator_refuses_a_wrong_manifest() -> None:
    with pytest.raises(AssertionError, match="bogus"):
        validate("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {bogus: 1, ports: [{port: 80}]}\n")


def pod_config(docs: list[dict]) -> object:
    (configmap,) = by_kind(docs, "ConfigMap").values()
    return config_from_tree(yaml.safe_load(configmap["data"]["config.yaml"]))


@needs_kustomize
def test_fleet_overlay() -> None:
    docs = render("fleet")
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {f"streamgate-{r}" for r in ("edge", "broker", "farm", "control")}
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"][0] == name.removeprefix("streamgate-")
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        env = {e["name"]: e for e in container["env"]}
        assert env["STREAMGATE__AUTH__SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "streamgate-secrets"
        for key, ref in (("AWS_ACCESS_KEY_ID", "aws-access-key-id"),
                         ("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key")):
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "streamgate-secrets", "key": ref}
        # Endpoint and bucket come from the ConfigMap's config.yaml alone (an env value would
        # silently override what an operator edits there).
        assert not {"S3_ENDPOINT", "S3_BUCKET"} & set(env), name
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        (data,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/streamgate"]
        assert "emptyDir" in volumes[data] and "persistentVolumeClaim" not in volumes[data], name
    assert not by_kind(docs, "PersistentVolumeClaim")  # no ReadWriteMany volume shared by the roles
    (edge,) = deployments["streamgate-edge"]["spec"]["template"]["spec"]["containers"]
    assert edge["readinessProbe"]["httpGet"]["path"] == "/api/v1/health"
    assert edge["livenessProbe"]["httpGet"]["path"] == "/health"
    assert set(by_kind(docs, "PodDisruptionBudget")) == set(deployments)
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["streamgate-farm"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 16)
    targets = {m.get("resource", {}).get("name") or m["external"]["metric"]["name"]: m for m in hpa["metrics"]}
    assert targets["cpu"]["resource"]["target"]["averageUtilization"] == 70
    assert targets["memory"]["resource"]["target"]["averageUtilization"] == 80
    assert targets["streamgate_fleet_queue_length"]["external"]["target"]["averageValue"] == "10"
    secret = by_kind(docs, "Secret")["streamgate-secrets"]
    assert set(secret["stringData"]) == {"auth-secret", "aws-access-key-id", "aws-secret-access-key"}
    edge_hpa = by_kind(docs, "HorizontalPodAutoscaler")["streamgate-edge"]["spec"]
    assert edge_hpa["scaleTargetRef"]["name"] == "streamgate-edge" and edge_hpa["maxReplicas"] > 3
    config = pod_config(docs)
    assert config.deployment.mode == "fleet" and config.registry.type == "consul"
    assert config.storage.backend == "s3" and config.storage.data_dir == "/var/lib/streamgate"
    assert config.storage.s3.endpoint and config.storage.s3.bucket == "streamgate"


@needs_kustomize
def test_single_overlay() -> None:
    docs = render("single")
    (deployment,) = by_kind(docs, "Deployment").values()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["run"] and deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert not by_kind(docs, "HorizontalPodAutoscaler") and not by_kind(docs, "PodDisruptionBudget")
    assert by_kind(docs, "PersistentVolumeClaim")["streamgate-media"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (data,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/streamgate"]
    assert volumes[data] == {"name": data, "persistentVolumeClaim": {"claimName": "streamgate-media"}}
    config = pod_config(docs)
    assert config.deployment.mode == "single" and config.storage.backend == "disk"
