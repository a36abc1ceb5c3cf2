"""cluster/: the KubeRay manifests validate against the pinned schema and agree with each other, the image and
the repository; the runtime env is one Ray accepts and installs what pyproject.toml declares."""

import json
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
SCHEMA = json.loads((CLUSTER / "schema" / "kuberay-v1.schema.json").read_text())
MANIFESTS = ["raycluster.yaml", "rayjob-flow-dpo.yaml"]


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_validate_against_the_pinned_schema(name):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert _errors(_load(name)) == []


def test_the_schema_refuses_what_the_api_server_would_refuse_or_silently_drop():
    cluster = _load("raycluster.yaml")
    bad = json.loads(json.dumps(cluster))
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    assert any("rayStartParams" in e for e in _errors(bad))
    bad = json.loads(json.dumps(cluster))
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}  # typo: pruned
    assert _errors(bad)
    bad = json.loads(json.dumps(cluster))
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "128GB"
    assert _errors(bad)  # not a Kubernetes quantity (128Gi is)
    job = _load("rayjob-flow-dpo.yaml")
    del job["spec"]["clusterSelector"]
    assert _errors(job)  # neither a selector nor a cluster spec


def test_cluster_and_job_agree_with_each_other_and_the_image():
    cluster, job = _load("raycluster.yaml"), _load("rayjob-flow-dpo.yaml")
    spec = cluster["spec"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    # shutdownAfterJobFinishes only deletes a cluster the RayJob created; with a selector it is ignored
    assert not job["spec"].get("shutdownAfterJobFinishes")
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1, images  # one image, the one cluster/Dockerfile builds
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    base = next(line.split("=", 1)[1] for line in dockerfile.splitlines() if line.startswith("ARG BASE_IMAGE="))
    assert base.startswith(f"rayproject/ray:{spec['rayVersion']}-"), (base, spec["rayVersion"])
    assert "WORKDIR /app" in dockerfile and "COPY --chown=ray:users . /app" in dockerfile
    for g in groups:
        pod = g["template"]["spec"]
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes
            assert {"/mnt/shared"} <= {m["mountPath"] for m in c.get("volumeMounts", [])}
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    gpus = sum(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) * g["replicas"]
               for g in spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"])
    config = yaml.safe_load((CLUSTER / "flow_dpo_wan.yaml").read_text())
    assert config["num_workers"] <= gpus  # the job's Ray Train workers fit on the cluster's GPUs


def test_job_entrypoint_names_files_of_the_image_and_a_valid_config():
    from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig

    job = _load("rayjob-flow-dpo.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python"
    script, config = Path(argv[1]), Path(argv[argv.index("--config") + 1])
    for path in (script, config):  # absolute, inside the image's copy of the repository
        assert path.is_absolute() and path.parts[:2] == ("/", "app"), path
        assert (ROOT / path.relative_to("/app")).is_file(), path
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert "working_dir" not in runtime_env  # would be resolved on the submitter pod
    cfg = FlowDPOConfig(**yaml.safe_load((ROOT / config.relative_to("/app")).read_text()))
    assert cfg.preset == "wan2.1-1.3b" and cfg.output_dir.startswith("/mnt/shared/")


def test_runtime_env_is_accepted_by_ray_and_installs_the_declared_dependencies():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # Ray's own validation of every field
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(map(str, map(Requirement, env["pip"]))) == sorted(map(str, map(Requirement, declared)))
    assert {".venv", ".git", "outputs"} <= set(env["excludes"])
    assert env["working_dir"] == "."


def test_runtime_env_upload_is_the_package_and_jobs_only_small(tmp_path):
    """What Ray zips for ``working_dir: "."`` with these excludes: the package and jobs, no venv or outputs."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    zip_path = tmp_path / "pkg.zip"
    # not relying on .gitignore (Ray honours it unless told not to): the excludes alone keep .venv out
    create_package(str(ROOT), zip_path, include_gitignore=False, excludes=env["excludes"])
    names = zipfile.ZipFile(zip_path).namelist()
    assert any(n.startswith("videoalign_ray/") for n in names) and any(n.startswith("jobs/") for n in names)
    assert not [n for n in names if n.startswith((".venv/", ".git/", "outputs/")) or "__pycache__" in n]
    assert zip_path.stat().st_size < 50 * 2**20, zip_path.stat().st_size
