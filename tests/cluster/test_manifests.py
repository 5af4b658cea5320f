"""KubeRay manifests (k8s/), the image recipe and cluster.yaml, checked without a cluster.

- RayJob / RayCluster: apiVersion ray.io/v1, the kinds, the fields KubeRay's CRDs
  require (spec.headGroupSpec.template; each worker group's groupName, minReplicas,
  maxReplicas, template; a pod template's containers, each named), the entrypoint
  names an existing jobs/*.py and config;
- every pod template, as a core Kubernetes Pod, against the Kubernetes OpenAPI schema
  (kubernetes-validate, strict: unknown fields fail);
- cluster.yaml against Ray's own cluster-config schema (ray/autoscaler/ray-schema.json).
"""

from __future__ import annotations

import copy
import json
import os
import shlex

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(ROOT, "k8s")
K8S_VERSION = "1.30.0"


def _load(name: str) -> dict:
    with open(os.path.join(K8S, name)) as f:
        return yaml.safe_load(f)


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _pod_templates(doc: dict) -> list[tuple[str, dict]]:
    spec = _cluster_spec(doc)
    out = [("head", spec["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])]
    return out


def kuberay_problems(doc: dict, kind: str) -> list[str]:
    """What KubeRay's v1 CRDs (ray.io_rayclusters / ray.io_rayjobs) require, as problems."""
    p = []
    if doc.get("apiVersion") != "ray.io/v1":
        p.append(f"apiVersion {doc.get('apiVersion')!r}, not ray.io/v1")
    if doc.get("kind") != kind:
        p.append(f"kind {doc.get('kind')!r}, not {kind}")
    if not (doc.get("metadata") or {}).get("name"):
        p.append("metadata.name missing")
    spec = doc.get("spec") or {}
    if kind == "RayJob":
        if not spec.get("entrypoint"):
            p.append("spec.entrypoint missing")
        if "rayClusterSpec" not in spec and "clusterSelector" not in spec:
            p.append("spec.rayClusterSpec (or clusterSelector) missing")
        spec = spec.get("rayClusterSpec") or {}
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict) or "template" not in head:
        p.append("headGroupSpec.template missing")
    for i, g in enumerate(spec.get("workerGroupSpecs") or []):
        for key in ("groupName", "maxReplicas", "minReplicas", "template"):
            if key not in g:
                p.append(f"workerGroupSpecs[{i}].{key} missing")
        if {"minReplicas", "maxReplicas"} <= g.keys() and not (
            g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
        ):
            p.append(f"workerGroupSpecs[{i}]: replicas outside minReplicas..maxReplicas")
    for where, t in _pod_templates(doc) if not p else []:
        containers = (t.get("spec") or {}).get("containers") or []
        if not containers or not all(c.get("name") for c in containers):
            p.append(f"{where}: template.spec.containers missing or unnamed")
    return p


@pytest.mark.parametrize(
    ("name", "kind"), [("rayjob.yaml", "RayJob"), ("raycluster.yaml", "RayCluster")]
)
def test_manifest_has_what_kuberay_requires(name, kind):
    assert kuberay_problems(_load(name), kind) == []


def test_the_structure_check_can_fail():
    doc = _load("rayjob.yaml")
    bad = copy.deepcopy(doc)
    bad["apiVersion"] = "ray.io/v1alpha1"
    del bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"]
    del bad["spec"]["entrypoint"]
    problems = kuberay_problems(bad, "RayJob")
    assert len(problems) == 3, problems


def test_rayjob_entrypoint_names_an_existing_job_and_config():
    doc = _load("rayjob.yaml")
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1].startswith("jobs/")
    assert os.path.isfile(os.path.join(ROOT, argv[1])), argv[1]
    config = argv[argv.index("--config") + 1]
    assert os.path.isfile(os.path.join(ROOT, config)), config
    from raysv.config import load_config  # the config loads as the job would load it
    from raysv.training.config import PretrainConfig

    assert argv[1] == "jobs/pretrain.py"
    load_config(PretrainConfig, os.path.join(ROOT, config))
    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    assert env["working_dir"] == "/app"  # where k8s/Dockerfile puts the repository


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycluster.yaml"])
def test_pod_templates_are_valid_kubernetes_pods(name):
    import kubernetes_validate

    for where, t in _pod_templates(_load(name)):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": t.get("metadata") or {"name": where}}
        pod["metadata"].setdefault("name", where)
        pod["spec"] = t["spec"]
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_pod_validation_can_fail():
    import kubernetes_validate

    t = _pod_templates(_load("raycluster.yaml"))[0][1]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": copy.deepcopy(t["spec"]),
    }
    pod["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"many": 4}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_dockerfile_installs_from_the_gpu_lock():
    with open(os.path.join(K8S, "Dockerfile")) as f:
        text = f.read()
    assert "RAYSV_LOCK=gpu bash scripts/setup.sh" in text
    assert os.path.isfile(os.path.join(ROOT, "requirements", "lock-gpu.txt"))
    for copied in ("pyproject.toml", "requirements/", "scripts/", "raysv/", "jobs/", "configs/"):
        assert f"COPY {copied}" in text
        assert os.path.exists(os.path.join(ROOT, copied))
    images = {
        c["image"]
        for n in ("rayjob.yaml", "raycluster.yaml")
        for _, t in _pod_templates(_load(n))
        for c in t["spec"]["containers"]
    }
    assert images == {"REGISTRY/raysv:TAG"}


def _ray_schema() -> dict:
    import ray

    with open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")) as f:
        return json.load(f)


def test_cluster_yaml_matches_rays_cluster_config_schema():
    import jsonschema

    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        cfg = yaml.safe_load(f)
    jsonschema.validate(cfg, _ray_schema())
    bad = dict(cfg, max_workers="many")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _ray_schema())
