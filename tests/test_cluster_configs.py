"""The cluster configs parse and name what a GPU cluster needs: the Ray launcher YAML against Ray's own
schema, the KubeRay manifests (ray.io/v1) for GPU workers and a shared run-dir volume, the Dockerfile."""
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def load_all(name: str) -> dict:
    """Kind -> document of a (multi-document) manifest."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all((CLUSTER / name).read_text())}


def image_of(pod_template: dict) -> str:
    (container,) = pod_template["spec"]["containers"]
    return container["image"]


def launcher_image() -> str:
    return yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())["docker"]["image"]


def test_launcher_config_is_valid_for_ray_and_has_gpu_workers():
    import jsonschema
    import ray.autoscaler
    cfg = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    for key in ("cluster_name", "provider", "docker", "available_node_types", "head_node_type"):
        assert cfg[key], key
    assert cfg["provider"]["type"]
    assert cfg["head_node_type"] in cfg["available_node_types"]
    gpu_types = [t for t in cfg["available_node_types"].values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["max_workers"] >= 1 for t in gpu_types)
    options = " ".join(cfg["docker"]["run_options"])
    assert "--entrypoint ''" in options  # the image's entrypoint is `sampler`; the launcher runs bash
    assert "-v /mnt/shared:/mnt/shared" in options
    assert "-e SAMPLER_WORKER_GPUS=1" in options  # actors wait for GPU nodes the autoscaler starts


@pytest.mark.parametrize("name", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_kuberay_manifests_have_gpu_workers_and_a_shared_volume(name):
    docs = load_all(name)
    claim = docs["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    if name.endswith("rayjob.yaml"):
        job = docs["RayJob"]
        assert job["apiVersion"] == "ray.io/v1"
        assert job["spec"]["entrypoint"].startswith("sampler run ")
        assert "--run-dir /mnt/shared/" in job["spec"]["entrypoint"]
        spec = job["spec"]["rayClusterSpec"]
    else:
        cluster = docs["RayCluster"]
        assert cluster["apiVersion"] == "ray.io/v1"
        spec = cluster["spec"]
    head = spec["headGroupSpec"]["template"]
    workers = spec["workerGroupSpecs"]
    assert workers
    (driver_container,) = head["spec"]["containers"]  # the driver runs on the head
    assert {"name": "SAMPLER_WORKER_GPUS", "value": "1"} in driver_container["env"]
    for pod in [head] + [w["template"] for w in workers]:
        assert image_of(pod) == launcher_image()
        (container,) = pod["spec"]["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        shared = [n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName")
                  == claim["metadata"]["name"]]
        assert shared and mounts[shared[0]] == "/mnt/shared"
    for group in workers:
        (container,) = group["template"]["spec"]["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert group["groupName"] and group["replicas"] >= 1


def test_dockerfile_installs_cuda_and_object_store_extras_before_source():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    text = "\n".join(lines)
    assert lines[0].startswith("FROM ")
    assert lines[-2:] == ['ENTRYPOINT ["sampler"]', 'CMD ["--help"]']
    deps = text.index('pip install ".[cuda,s3,gcs]"')  # GPU jax and the object-store filesystems
    assert text.index("COPY pyproject.toml") < deps < text.index("COPY sampler ")
    assert re.search(r"pip install --no-deps \.", text)
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[ignore.index("*") + 1:][:3] == ["!pyproject.toml", "!README.md", "!sampler/"]
