"""The deployment files, validated offline with real validators, each shown able to fail.

- KubeRay manifests (deploy/kubernetes/) against the RayCluster/RayJob CRD schemas of KubeRay
  v1.7.0, vendored in tests/data/deploy/ (the Kubernetes types inside, containers, resources,
  volumes, are part of those schemas), plus the spec rules KubeRay's controller enforces and
  FoldAtlas's own deployment rules (S3 atlas, GPU group from zero, versions).
- The plain Kubernetes objects (ServiceAccount, ConfigMaps) against the Kubernetes OpenAPI
  schemas bundled in ``kubernetes-validate``.
- The Ray cluster launcher config (deploy/aws/cluster.yaml) against ``ray-schema.json`` from the
  installed ``ray`` package and Ray's own ``prepare_config``/``validate_config``; each AWS
  ``node_config`` against the EC2 RunInstances request model that ships with botocore.
- The Dockerfile, parsed with ``dockerfile-parse``: targets, pinned Ray/torch/Python versions
  equal to what CI runs, MSA tools installed, FoldAtlas installed and smoke-tested.
"""

from __future__ import annotations

import copy
import io
import re
import shlex
import sys
import tempfile
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.crd_schema import (
    DNS1035_LABEL,
    cel_rule_paths,
    errors,
    has_path,
    load_vendored,
    validator_for,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DATA = ROOT / "tests" / "data" / "deploy"
KUBERAY_TAG = "v1.7.0"
RAYCLUSTER = DEPLOY / "kubernetes" / "raycluster.yaml"
RAYJOB = DEPLOY / "kubernetes" / "rayjob.yaml"
CONFIG = DEPLOY / "kubernetes" / "foldatlas-config.yaml"
AWS_CLUSTER = DEPLOY / "aws" / "cluster.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
# KubeRay v1.7.0, ray-operator/controllers/ray/utils/constant.go
MAX_NAME = {"RayCluster": 53, "RayJob": 47}
# GPUs per instance for the GPU types the launcher config may use (AWS instance type specs)
GPUS_PER_INSTANCE = {"g5.xlarge": 1, "g5.2xlarge": 1, "g5.12xlarge": 4, "p4d.24xlarge": 8, "p5.48xlarge": 8,
                     "p5en.48xlarge": 8}


def ray_version() -> str:
    import ray

    return str(ray.__version__)


def package_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@cache
def crd_validator(plural: str) -> Any:
    _, raw = load_vendored(DATA / f"kuberay-{KUBERAY_TAG}-{plural}-v1.json")
    return validator_for(raw)


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def pod_specs(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])})
    return pods


def run_config_text() -> str:
    (cm,) = [d for d in load_all(CONFIG) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "foldatlas-run-config"]
    return str(cm["data"]["run.toml"])


def load_run_config(text: str) -> Any:
    from pipeline.config import load_config

    with tempfile.NamedTemporaryFile("w", suffix=".toml") as fh:
        fh.write(text)
        fh.flush()
        return load_config(Path(fh.name))


# ---- rules KubeRay's controller applies before it creates anything ---------------------------------
# (re-expressed from ray-operator/controllers/ray/utils/validation.go at v1.7.0: the CRD schema
# cannot say these, the operator rejects the resource at reconcile time)

def kuberay_problems(manifest: dict[str, Any]) -> list[str]:
    kind, name = manifest["kind"], manifest["metadata"].get("name", "")
    problems = []
    if not DNS1035_LABEL.match(name) or len(name) > MAX_NAME[kind]:
        problems.append(f"{kind} name {name!r} must be a DNS-1035 label of at most {MAX_NAME[kind]} characters")
    if kind == "RayJob":
        spec = manifest["spec"]
        if ("rayClusterSpec" in spec) == bool(spec.get("clusterSelector")):
            problems.append("exactly one of rayClusterSpec and clusterSelector must be set")
        if spec.get("backoffLimit", 0) < 0 or (spec.get("clusterSelector") and spec.get("backoffLimit", 0) > 0):
            problems.append("backoffLimit must be >= 0 and is not allowed with clusterSelector")
        if "activeDeadlineSeconds" in spec and spec["activeDeadlineSeconds"] <= 0:
            problems.append("activeDeadlineSeconds must be positive")
        if spec.get("ttlSecondsAfterFinished", 0) < 0:
            problems.append("ttlSecondsAfterFinished must be >= 0")
        if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
            problems.append("suspend needs shutdownAfterJobFinishes")
        if "rayClusterSpec" not in spec:
            return problems
    spec = cluster_spec(manifest)
    groups = spec.get("workerGroupSpecs", [])
    names = [g["groupName"] for g in groups]
    if len(set(names)) != len(names):
        problems.append(f"worker group names repeat: {names}")
    for group_name, pod in pod_specs(spec).items():
        if not pod.get("containers"):
            problems.append(f"{group_name}: the pod template has no container")
    v2 = spec.get("enableInTreeAutoscaling") and spec.get("autoscalerOptions", {}).get("version") == "v2"
    for g in [spec["headGroupSpec"], *groups]:
        label = g.get("groupName", "head")
        lo, hi = g.get("minReplicas", 0), g.get("maxReplicas", 2**31 - 1)
        if not (0 <= lo <= hi) or not (lo <= g.get("replicas", lo) <= hi):
            problems.append(f"{label}: need 0 <= minReplicas <= replicas <= maxReplicas")
        if g.get("resources") and {"num-cpus", "num-gpus", "memory", "resources"} & set(g.get("rayStartParams", {})):
            problems.append(f"{label}: resources set both in rayStartParams and resources")
        if v2 and g["template"]["spec"].get("restartPolicy", "Never") != "Never":
            problems.append(f"{label}: autoscaler v2 needs restartPolicy Never (or unset)")
    return problems


# ---- FoldAtlas's deployment rules ------------------------------------------------------------------

def foldatlas_problems(manifest: dict[str, Any]) -> list[str]:
    spec = cluster_spec(manifest)
    problems = []
    if spec.get("rayVersion") != ray_version():
        problems.append(f"rayVersion {spec.get('rayVersion')} != Ray {ray_version()} that CI tests with")
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("the autoscaler must be enabled (GPU group scales from 0)")
    if spec["headGroupSpec"]["rayStartParams"].get("num-cpus") != "0":
        problems.append("the head must not run actors (num-cpus '0')")
    groups = {g["groupName"]: g for g in spec.get("workerGroupSpecs", [])}
    if set(groups) != {"cpu", "gpu"}:
        problems.append(f"expected worker groups cpu and gpu, got {sorted(groups)}")
        return problems
    gpu = groups["gpu"]
    gpu_res = gpu["template"]["spec"]["containers"][0]["resources"]
    if gpu.get("minReplicas") != 0 or gpu.get("replicas", 0) != 0:
        problems.append("the gpu group must start at, and scale down to, 0 pods")
    if gpu_res.get("limits", {}).get("nvidia.com/gpu") != 1 or gpu_res.get("requests", {}).get("nvidia.com/gpu") != 1:
        problems.append("each gpu pod must request and limit exactly nvidia.com/gpu: 1")
    cpu_res = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]
    if any("gpu" in k for k in {**cpu_res.get("limits", {}), **cpu_res.get("requests", {})}):
        problems.append("the cpu group must not take GPUs")
    fold_actors = load_run_config(run_config_text()).ray.fold_actors
    if gpu.get("maxReplicas") != fold_actors:
        problems.append(f"gpu maxReplicas {gpu.get('maxReplicas')} != [ray] fold_actors {fold_actors}")
    for group_name, pod in pod_specs(spec).items():
        if pod.get("serviceAccountName") != "foldatlas":
            problems.append(f"{group_name}: serviceAccountName must be foldatlas (IRSA for S3)")
        if any("hostPath" in v for v in pod.get("volumes", [])):
            problems.append(f"{group_name}: no hostPath volumes (a node's disk is not shared storage)")
        for c in pod["containers"]:
            flavour = "gpu" if group_name == "gpu" else "cpu"
            want = f"foldatlas:{package_version()}-{flavour}"
            if not c["image"].endswith(want):
                problems.append(f"{group_name}: image {c['image']} should end with {want}")
            refs = [e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])]
            if "foldatlas-s3" not in refs:
                problems.append(f"{group_name}: container {c['name']} lacks envFrom foldatlas-s3 (AWS_REGION, endpoint)")
            for e in c.get("env", []):
                if e["name"].startswith("AWS_SECRET") and "value" in e:
                    problems.append(f"{group_name}: literal {e['name']}: use the Secret")
    if manifest["kind"] == "RayJob":
        words = shlex.split(manifest["spec"]["entrypoint"].replace(";", " ; "))
        script = shlex.split(words[-1]) if words[:2] == ["bash", "-c"] else words
        atlas = script[script.index("--atlas") + 1] if "--atlas" in script else ""
        if not atlas.startswith("s3://"):
            problems.append(f"the atlas must be on S3 (shared by every pod), got {atlas!r}")
        if "--config" not in script or script[script.index("--config") + 1] != "/etc/foldatlas/run.toml":
            problems.append("the run must use the mounted run config /etc/foldatlas/run.toml")
    return problems


# ---- KubeRay CRD schema ------------------------------------------------------------------------------

def test_vendored_crds_record_their_source() -> None:
    readme = (DATA / "README.md").read_text()
    for plural in ("rayclusters", "rayjobs"):
        path = DATA / f"kuberay-{KUBERAY_TAG}-{plural}-v1.json"
        source, raw = load_vendored(path)
        assert source["tag"] == KUBERAY_TAG and re.fullmatch(r"[0-9a-f]{40}", source["commit"])
        assert source["licence"] == "Apache-2.0" and source["path"].endswith(f"ray.io_{plural}.yaml")
        assert source["commit"] in readme and path.name in readme
        assert path.stat().st_size < 2_000_000 and raw["type"] == "object"


@pytest.mark.parametrize(("path", "plural"), [(RAYCLUSTER, "rayclusters"), (RAYJOB, "rayjobs")], ids=["raycluster", "rayjob"])
def test_manifest_is_valid_against_kuberay_crd(path: Path, plural: str) -> None:
    manifest = load(path)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert errors(crd_validator(plural), manifest) == []
    assert kuberay_problems(manifest) == []
    assert foldatlas_problems(manifest) == []


@pytest.mark.parametrize("plural", ["rayclusters", "rayjobs"])
def test_manifests_stay_clear_of_cel_rules(plural: str) -> None:
    """CEL rules (x-kubernetes-validations) are not evaluated here; the manifests use none of those fields."""
    _, raw = load_vendored(DATA / f"kuberay-{KUBERAY_TAG}-{plural}-v1.json")
    paths = cel_rule_paths(raw)
    assert paths, "the CRD should have some CEL rules; has the schema format changed?"
    manifest = load(RAYCLUSTER if plural == "rayclusters" else RAYJOB)
    assert [p for p in paths if has_path(manifest, p)] == []


def test_rayjob_cluster_is_the_raycluster() -> None:
    assert load(RAYJOB)["spec"]["rayClusterSpec"] == load(RAYCLUSTER)["spec"]


@pytest.mark.slow
@pytest.mark.parametrize("plural", ["rayclusters", "rayjobs"])
def test_translated_crd_schema_is_valid_json_schema(plural: str) -> None:
    _, raw = load_vendored(DATA / f"kuberay-{KUBERAY_TAG}-{plural}-v1.json")
    validator_for(raw, check_schema=True)  # raises SchemaError on a bad translation


def _gpu_group(m: dict[str, Any]) -> dict[str, Any]:
    return next(g for g in cluster_spec(m)["workerGroupSpecs"] if g["groupName"] == "gpu")


def _gpu_container(m: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = _gpu_group(m)["template"]["spec"]["containers"][0]
    return container


BROKEN_SCHEMA = {
    "rayStartParams value not a string": (
        lambda m: cluster_spec(m)["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "is not of type 'string'"),
    "GPU quantity not a quantity": (
        lambda m: _gpu_container(m)["resources"]["limits"].update({"nvidia.com/gpu": "one"}), "does not match"),
    "misspelt field": (lambda m: _gpu_group(m).update({"minReplica": 0}), "'minReplica' was unexpected"),
    "replicas as a string": (lambda m: _gpu_group(m).update({"maxReplicas": "8"}), "is not of type 'integer'"),
    "int32 overflow": (lambda m: _gpu_group(m).update({"maxReplicas": 2**31}), "is greater than the maximum"),
    "container without a name": (lambda m: _gpu_container(m).pop("name"), "'name' is a required property"),
    "duplicate container port": (
        lambda m: cluster_spec(m)["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"].append(
            {"containerPort": 8265, "name": "again"}), "same list-map key"),
    "wrong enum": (lambda m: cluster_spec(m)["autoscalerOptions"].update({"upscalingMode": "Fast"}), "is not one of"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_SCHEMA))
@pytest.mark.parametrize(("path", "plural"), [(RAYCLUSTER, "rayclusters"), (RAYJOB, "rayjobs")], ids=["raycluster", "rayjob"])
def test_crd_schema_rejects_broken_copy(path: Path, plural: str, case: str) -> None:
    manifest = copy.deepcopy(load(path))
    mutate, expected = BROKEN_SCHEMA[case]
    mutate(manifest)
    found = errors(crd_validator(plural), manifest)
    assert any(expected in e for e in found), found


def test_rayjob_schema_rejects_unknown_submission_mode() -> None:
    manifest = copy.deepcopy(load(RAYJOB))
    manifest["spec"]["submissionMode"] = "K8sJob"
    manifest["spec"]["shutdownAfterJobFinishes"] = "yes"
    found = errors(crd_validator("rayjobs"), manifest)
    assert any("shutdownAfterJobFinishes" in e and "boolean" in e for e in found), found


BROKEN_RULES = {
    "min above max": (lambda m: _gpu_group(m).update({"minReplicas": 9}), "minReplicas <= replicas <= maxReplicas",
                      kuberay_problems),
    "same group twice": (lambda m: cluster_spec(m)["workerGroupSpecs"].append(copy.deepcopy(_gpu_group(m))),
                         "names repeat", kuberay_problems),
    "restartPolicy with autoscaler v2": (lambda m: _gpu_group(m)["template"]["spec"].update({"restartPolicy": "Always"}),
                                         "restartPolicy Never", kuberay_problems),
    "name too long": (lambda m: m["metadata"].update({"name": "foldatlas-" + "x" * 50}), "DNS-1035", kuberay_problems),
    "GPU group always on": (lambda m: _gpu_group(m).update({"minReplicas": 1, "replicas": 1}), "start at",
                            foldatlas_problems),
    "Ray version drift": (lambda m: cluster_spec(m).update({"rayVersion": "2.0.0"}), "rayVersion", foldatlas_problems),
    "GPU pod with two GPUs": (lambda m: _gpu_container(m)["resources"]["limits"].update({"nvidia.com/gpu": 2}),
                              "exactly nvidia.com/gpu: 1", foldatlas_problems),
    "no S3 settings": (lambda m: _gpu_container(m).update({"envFrom": []}), "foldatlas-s3", foldatlas_problems),
    "node-local disk": (lambda m: _gpu_group(m)["template"]["spec"]["volumes"].append(
        {"name": "data", "hostPath": {"path": "/data"}}), "hostPath", foldatlas_problems),
}


@pytest.mark.parametrize("case", sorted(BROKEN_RULES))
def test_rules_reject_broken_copy(case: str) -> None:
    manifest = copy.deepcopy(load(RAYCLUSTER))
    mutate, expected, check = BROKEN_RULES[case]
    mutate(manifest)
    assert any(expected in p for p in check(manifest)), check(manifest)


def test_rayjob_rules_reject_local_atlas() -> None:
    manifest = copy.deepcopy(load(RAYJOB))
    manifest["spec"]["entrypoint"] = manifest["spec"]["entrypoint"].replace("s3://my-bucket/atlases/human", "/data/atlas")
    assert any("must be on S3" in p for p in foldatlas_problems(manifest))
    manifest["spec"]["clusterSelector"] = {"ray.io/cluster": "foldatlas"}
    assert any("exactly one of" in p for p in kuberay_problems(manifest))


def test_cluster_run_config_is_a_valid_foldatlas_config() -> None:
    """The run.toml in the ConfigMap loads with FoldAtlas's own validated config (unknown keys are errors)."""
    cfg = load_run_config(run_config_text())
    assert cfg.ray.fold_gpus == 1, "an autoscaled GPU group starts empty: fold_gpus must be explicit"
    assert cfg.model.device == "cuda" and cfg.model.name == "esmfold" and (cfg.model.weights or "").startswith("s3://")
    assert cfg.ray.torch_threads is not None
    head = pod_specs(load(RAYCLUSTER)["spec"])["head"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    assert mounts["run-config"] == "/etc/foldatlas"
    assert volumes["run-config"]["configMap"]["name"] == "foldatlas-run-config"
    with pytest.raises(Exception, match="fold_actor"):
        load_run_config(run_config_text().replace("fold_actors", "fold_actor"))


def test_plain_kubernetes_objects_validate() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extra")
    docs = load_all(CONFIG)
    assert {d["kind"] for d in docs} == {"ServiceAccount", "ConfigMap"}
    for doc in docs:
        kv.validate(doc, "1.33.0", strict=True)
    broken = copy.deepcopy(next(d for d in docs if d["kind"] == "ConfigMap"))
    broken["data"]["replicas"] = 3
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, "1.33.0", strict=True)


# ---- Ray cluster launcher (AWS) ----------------------------------------------------------------------

def ray_launcher_schema() -> Any:
    import json

    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@cache
def ec2_model() -> Any:
    """The EC2 API model that ships inside botocore (no network, no credentials)."""
    import botocore.session

    return botocore.session.get_session().get_service_model("ec2")


def ec2_problems(node_config: dict[str, Any]) -> list[str]:
    """The node_config as the RunInstances request Ray sends (plus MinCount/MaxCount), checked by botocore."""
    from botocore.validate import ParamValidator

    model = ec2_model()
    report = ParamValidator().validate(dict(node_config, MinCount=1, MaxCount=1),
                                       model.operation_model("RunInstances").input_shape)
    problems = [line for line in report.generate_report().splitlines() if line.strip()]
    if node_config.get("InstanceType") not in model.shape_for("InstanceType").enum:
        problems.append(f"unknown instance type {node_config.get('InstanceType')!r}")
    for bd in node_config.get("BlockDeviceMappings", []):
        if bd.get("Ebs", {}).get("VolumeType", "gp3") not in model.shape_for("VolumeType").enum:
            problems.append(f"unknown EBS volume type {bd['Ebs']['VolumeType']!r}")
    return problems


def test_aws_cluster_config_is_valid_for_ray() -> None:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(AWS_CLUSTER)
    jsonschema.validate(config, ray_launcher_schema())
    validate_config(prepare_config(copy.deepcopy(config)))  # Ray's own checks, as `ray up` runs them
    for name, node_type in config["available_node_types"].items():
        assert ec2_problems(node_type["node_config"]) == [], name


def test_aws_cluster_config_follows_foldatlas_rules() -> None:
    config = load(AWS_CLUSTER)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    version = package_version()
    docker = config["docker"]
    assert docker["head_image"].endswith(f"foldatlas:{version}-cpu") and docker["image"].endswith(f"foldatlas:{version}-gpu")
    for name, t in types.items():
        assert "IamInstanceProfile" in t["node_config"], name
        instance = t["node_config"]["InstanceType"]
        gpus = t["resources"].get("GPU", 0)
        assert gpus == GPUS_PER_INSTANCE.get(instance, 0), f"{name}: {instance} has {GPUS_PER_INSTANCE.get(instance, 0)} GPUs"
        image = t.get("docker", {}).get("worker_image", docker["worker_image"])
        if name != config["head_node_type"]:
            assert image.endswith(f"-{'gpu' if gpus else 'cpu'}"), name
        if gpus:
            assert t.get("min_workers", 0) == 0, f"{name}: GPU nodes must scale from 0"
    # weights: staged on the host, mounted where run.toml points
    run = load_run_config((DEPLOY / "aws" / "run.toml").read_text())
    assert run.model.weights == "/models/esmfold_v1" and run.ray.fold_gpus == 1
    assert "-v /opt/models:/models:ro" in docker["run_options"]
    for name, t in types.items():
        if t["resources"].get("GPU") or name == config["head_node_type"]:
            assert any("/opt/models/esmfold_v1" in c for c in t.get("initialization_commands", [])), name
    # this checkout is installed on every node, and the Ray version checked there is CI's
    (remote, local), = config["file_mounts"].items()
    assert (ROOT / local / "deploy" / "aws" / "run.toml").is_file()
    assert any(f"pip install --quiet --no-deps {remote}" in c for c in config["setup_commands"])
    assert any(f"== '{ray_version()}'" in c for c in config["setup_commands"])


def test_ray_launcher_validators_reject_broken_copies() -> None:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(AWS_CLUSTER)
    for mutate in (lambda c: c.update({"max_workers": "17"}), lambda c: c.update({"worker_nodes": {}, "min_workers": 1}),
                   lambda c: c["available_node_types"]["gpu_worker"].pop("resources"),
                   lambda c: c["available_node_types"]["gpu_worker"]["resources"].update({"GPU": -1})):
        broken = copy.deepcopy(config)
        mutate(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, ray_launcher_schema())
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "head_node"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))
    node = copy.deepcopy(config["available_node_types"]["gpu_worker"]["node_config"])
    node["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] = "200"
    node["InstanceType"] = "g5.3xlarge"
    node["IamInstanceProfil"] = node.pop("IamInstanceProfile")
    found = "\n".join(ec2_problems(node))
    assert "VolumeSize" in found and "g5.3xlarge" in found and "IamInstanceProfil" in found


# ---- Dockerfile -------------------------------------------------------------------------------------------

def dockerfile_stages(text: str) -> tuple[dict[str, str], dict[str, list[tuple[str, str]]], dict[str, str]]:
    """(global ARG defaults, stage name -> [(instruction, value)], stage name -> resolved base image)."""
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    global_args: dict[str, str] = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    bases: dict[str, str] = {}
    current = None
    for ins in parser.structure:
        kind, value = ins["instruction"], ins["value"]
        if kind == "COMMENT":
            continue
        if kind == "FROM":
            image, _, name = value.partition(" AS ")
            current = name.strip() or image
            stages[current] = []
            bases[current] = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), image.strip())
        elif current is None and kind == "ARG" and "=" in value:
            key, _, default = value.partition("=")
            global_args[key.strip()] = default.strip()
        elif current is not None:
            stages[current].append((kind, value))
    return global_args, stages, bases


def dockerfile_problems(text: str) -> list[str]:
    args, stages, bases = dockerfile_stages(text)
    problems = []
    want = {"RAY_VERSION": ray_version(), "PYTHON_VERSION": f"{sys.version_info.major}.{sys.version_info.minor}"}
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    want["TORCH_VERSION"] = pins["torch"]
    for key, value in want.items():
        if args.get(key) != value:
            problems.append(f"ARG {key}={args.get(key)} but CI runs {value}")
    missing = {"builder", "os-cpu", "os-gpu", "runtime"} - set(stages)
    if missing or args.get("FLAVOUR") not in ("cpu", "gpu"):
        return [*problems, f"expected stages builder, os-cpu, os-gpu, runtime and ARG FLAVOUR; missing {missing}"]
    if not bases["os-gpu"].startswith("nvidia/cuda:"):
        problems.append(f"the gpu flavour must build on nvidia/cuda, not {bases['os-gpu']}")
    if bases["runtime"] != f"os-{args['FLAVOUR']}" or list(stages)[-1] != "runtime":
        problems.append("the last stage must be `runtime`, built FROM os-${FLAVOUR}")
    build = " ".join(v for k, v in stages["builder"] if k == "RUN")
    if "cpu) torch_index=https://download.pytorch.org/whl/cpu" not in build:
        problems.append("builder: the cpu flavour must take torch from the CPU-only index")
    if not re.search(r'"torch==\$\{TORCH_VERSION\}"', build) or "-c constraints.txt" not in build:
        problems.append("builder: torch must be pinned to TORCH_VERSION with constraints.txt")
    if not re.search(r'"ray\[[a-z,]*default[a-z,]*\]==\$\{RAY_VERSION\}"', build):
        problems.append("builder: Ray (with the dashboard, `default`) must be pinned to RAY_VERSION")
    if not re.search(r"uv pip install [^&]* \.(\s|$)", build):
        problems.append("builder: FoldAtlas itself (`.`) is not installed")
    runtime = stages["runtime"]
    runs = " ".join(v for k, v in runtime if k == "RUN")
    for pkg in ("mmseqs2", "hmmer", "gemmi", "wget"):
        if not re.search(rf"apt-get install[^&]*\b{pkg}\b", runs):
            problems.append(f"runtime: apt-get install lacks {pkg}")
    if "foldatlas --help" not in runs:
        problems.append("runtime: no `foldatlas --help` smoke test")
    if not any(k == "COPY" and "/opt/foldatlas" in v for k, v in runtime):
        problems.append("runtime: the virtual environment is not copied in")
    users = [v for k, v in runtime if k == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("runtime: must run as a non-root user")
    if not any(k == "HEALTHCHECK" for k, _ in runtime):
        problems.append("runtime: no HEALTHCHECK")
    return problems


def test_dockerfile_matches_what_ci_tests() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


@pytest.mark.parametrize(("pattern", "new", "expected"), [
    (r"ARG RAY_VERSION=\S+", "ARG RAY_VERSION=2.0.0", "ARG RAY_VERSION"),
    (r"ARG TORCH_VERSION=\S+", "ARG TORCH_VERSION=2.0.0", "ARG TORCH_VERSION"),
    (r"ARG PYTHON_VERSION=\S+", "ARG PYTHON_VERSION=3.12", "ARG PYTHON_VERSION"),
    (r"mmseqs2 hmmer gemmi", "hmmer gemmi", "lacks mmseqs2"),
    (r"USER foldatlas", "USER root", "non-root"),
    (r"ARG CUDA_IMAGE=nvidia/cuda:", "ARG CUDA_IMAGE=docker.io/library/ubuntu:", "nvidia/cuda"),
    (r"awscli \.\n", "awscli\n", "is not installed"),
    (r"cpu\) torch_index=\S+", "cpu) torch_index=https://pypi.org/simple", "CPU-only index"),
    (r"FROM os-\$\{FLAVOUR\} AS runtime", "FROM os-cpu AS runtime", "os-${FLAVOUR}"),
])
def test_dockerfile_check_rejects_drift(pattern: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert re.search(pattern, text), pattern
    problems = dockerfile_problems(re.sub(pattern, new, text))
    assert any(expected in p for p in problems), problems
