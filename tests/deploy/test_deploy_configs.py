"""Deployment files agree with each other and with what Ray, KubeRay and Docker need.

The Ray version is pinned once, in pyproject.toml; the Dockerfiles' base images, the cluster
launcher's image, and KubeRay's ``rayVersion`` and images must all name that same version. The
cluster-launcher config is also checked with Ray's own validator (the one ``ray up`` runs), and
the job commands in the manifests are parsed with the real ``nncd`` parser, so a renamed flag
breaks this test rather than a cluster run.
"""

from __future__ import annotations

import argparse
import copy
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from paths import ROOT

LAUNCHER = ROOT / "cluster" / "gpu-cluster.yaml"
RAYCLUSTER = ROOT / "cluster" / "kuberay" / "raycluster.yaml"
RAYJOB = ROOT / "cluster" / "kuberay" / "rayjob.yaml"
RAYSERVICE = ROOT / "cluster" / "kuberay" / "rayservice.yaml"
DOCKERFILES = {"gpu": ROOT / "docker" / "Dockerfile", "cpu": ROOT / "docker" / "Dockerfile.cpu"}
DOCKERIGNORE = ROOT / ".dockerignore"
PYTHON_TAG = "py311"


def pinned_ray_version() -> str:
    """The X.Y.Z of ``ray[default]==X.Y.Z`` in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"ray(\[[^\]]*\])?==([0-9.]+)", requirement.replace(" ", ""))
        if match:
            return match.group(2)
    raise AssertionError("pyproject.toml does not pin ray with ==")


RAY = pinned_ray_version()
GPU_IMAGE_TAG = f"{RAY}-{PYTHON_TAG}-gpu"


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path} is not a YAML mapping"
    return document


def image_tag(image: str) -> str:
    _, sep, tag = image.rpartition(":")
    assert sep and "/" not in tag, f"image {image!r} has no explicit tag"
    return tag


def job_arguments(command: str, script: str) -> list[str]:
    """The arguments after ``python .../<script>`` in a shell command line."""
    words = shlex.split(command)
    for index, word in enumerate(words):
        if word.endswith(script) and index > 0 and words[index - 1].startswith("python"):
            rest = words[index + 1 :]
            return rest[: rest.index("&&")] if "&&" in rest else rest
    raise AssertionError(f"no `python ...{script}` in {command!r}")


def test_installed_ray_is_the_pinned_one() -> None:
    import ray

    assert ray.__version__ == RAY


# -- Ray cluster launcher -----------------------------------------------------------------------


def test_launcher_config_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(LAUNCHER)
    validate_config(prepare_config(copy.deepcopy(config)))  # raises on a schema error


def test_launcher_config_has_a_gpu_worker_type_and_the_pinned_image() -> None:
    config = load(LAUNCHER)
    assert config["cluster_name"]
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {name: spec for name, spec in types.items() if name != config["head_node_type"]}
    gpu_types = [spec for spec in workers.values() if spec["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "no worker node type offers a GPU"
    assert all(spec.get("max_workers", 0) >= 1 for spec in gpu_types)
    # a matrix job refuses a cluster where no node could host a GPU actor: keep one GPU node
    assert any(spec.get("min_workers", 0) >= 1 for spec in gpu_types)
    assert config["max_workers"] >= 1
    assert sum(spec.get("min_workers", 0) for spec in workers.values()) <= config["max_workers"]

    docker = config["docker"]
    assert image_tag(docker["image"]) == GPU_IMAGE_TAG
    options = " ".join(docker.get("run_options", []) + docker.get("worker_run_options", []))
    assert "--shm-size" in options, "Ray's object store needs a larger /dev/shm in the container"


def test_launcher_starts_ray_with_token_auth_and_installs_the_project() -> None:
    config = load(LAUNCHER)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts, key
        for command in starts:
            assert "RAY_AUTH_MODE=token" in command and "RAY_AUTH_TOKEN_PATH=" in command
    token_mounts = [
        remote for remote, local in config["file_mounts"].items() if "auth_token" in local
    ]
    assert token_mounts, "the token file must reach every node"
    setup = " ".join(config["setup_commands"])
    source = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    assert "pip install" in setup and source in setup


# -- KubeRay -------------------------------------------------------------------------------------


def cluster_spec(path: Path) -> dict[str, Any]:
    document = load(path)
    assert document["apiVersion"] == "ray.io/v1"
    if document["kind"] == "RayJob":
        spec: dict[str, Any] = document["spec"]["rayClusterSpec"]
        return spec
    if document["kind"] == "RayService":
        service: dict[str, Any] = document["spec"]["rayClusterConfig"]
        return service
    assert document["kind"] == "RayCluster"
    cluster: dict[str, Any] = document["spec"]
    return cluster


def pod_templates(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB, RAYSERVICE], ids=lambda p: p.name)
def test_kuberay_cluster_pins_ray_and_uses_token_auth(path: Path) -> None:
    spec = cluster_spec(path)
    assert spec["rayVersion"] == RAY
    assert spec["authOptions"]["mode"] == "token"
    assert "rayStartParams" in spec["headGroupSpec"]
    assert spec["workerGroupSpecs"], "no worker group"
    for name, pod in pod_templates(spec):
        for container in pod["containers"]:
            assert image_tag(container["image"]) == GPU_IMAGE_TAG, (name, container["image"])


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB, RAYSERVICE], ids=lambda p: p.name)
def test_kuberay_workers_request_gpus_and_mount_shared_memory(path: Path) -> None:
    spec = cluster_spec(path)
    for group in spec["workerGroupSpecs"]:
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["rayStartParams"] is not None
        for container in group["template"]["spec"]["containers"]:
            resources = container["resources"]
            gpus = int(resources["limits"]["nvidia.com/gpu"])
            assert gpus >= 1
            # Kubernetes: an extended resource's request, when given, must equal its limit
            assert int(resources.get("requests", {}).get("nvidia.com/gpu", gpus)) == gpus
    for name, pod in pod_templates(spec):
        memory_volumes = {
            volume["name"]
            for volume in pod.get("volumes", [])
            if volume.get("emptyDir", {}).get("medium") == "Memory"
        }
        for container in pod["containers"]:
            mounts = {
                m["name"] for m in container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"
            }
            assert mounts & memory_volumes, f"{name}: /dev/shm is not an in-memory emptyDir"


def test_rayjob_runs_the_matrix_job_on_object_storage() -> None:
    from nncd_ray.cli.main import build_parser

    document = load(RAYJOB)
    arguments = job_arguments(document["spec"]["entrypoint"], "jobs/matrix.py")
    parsed = build_parser().parse_args(["matrix", *arguments])
    assert parsed.store.startswith("s3://"), "pods are ephemeral: the store must be remote"
    assert document["spec"].get("backoffLimit", 0) >= 1  # retries resume the same store


def test_rayservice_runs_nncd_serve_with_its_token() -> None:
    """The Serve config passes Ray's own schema; its application is ``nncd serve``'s builder,
    with options the real parser takes; every container gets the service's token."""
    import importlib

    from ray.serve.schema import ServeDeploySchema

    from nncd_ray.cli.serve import add_serve_arguments

    document = load(RAYSERVICE)
    assert document["apiVersion"] == "ray.io/v1" and document["kind"] == "RayService"
    serve_config = ServeDeploySchema.model_validate(
        yaml.safe_load(document["spec"]["serveConfigV2"])
    )
    (application,) = serve_config.applications
    module, _, name = application.import_path.partition(":")
    builder = getattr(importlib.import_module(module), name)
    assert callable(builder)
    parser = argparse.ArgumentParser(add_help=False)
    add_serve_arguments(parser)
    parsed = parser.parse_args(shlex.split(application.args["command"]))
    assert not parsed.no_auth and parsed.token_file is None  # the token comes from the env
    assert parsed.refs and parsed.gpus_per_replica == 1 and parsed.replicas >= 1
    assert serve_config.http_options.host == "0.0.0.0"
    spec = cluster_spec(RAYSERVICE)
    replicas = sum(group["replicas"] for group in spec["workerGroupSpecs"])
    assert replicas >= parsed.replicas  # one GPU pod per scorer replica
    for name_, pod in pod_templates(spec):
        mounted = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert str(Path(parsed.refs).parent) in mounted, f"{name_}: the references are not mounted"
        for container in pod["containers"]:
            tokens = [e for e in container.get("env", []) if e["name"] == "NNCD_SERVE_TOKEN"]
            assert tokens and "secretKeyRef" in tokens[0]["valueFrom"], name_


# -- Docker --------------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_builds_on_the_pinned_ray_image(flavour: str) -> None:
    steps = instructions(DOCKERFILES[flavour])
    bases = [args for keyword, args in steps if keyword == "FROM"]
    suffix = "-gpu" if flavour == "gpu" else ""
    assert bases == [f"rayproject/ray:{RAY}-{PYTHON_TAG}{suffix}"]
    text = DOCKERFILES[flavour].read_text()
    assert "latest" not in text
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert re.search(r"pip install --no-cache-dir \"?\./?(\[[a-z0-9,]+\])?\"?", runs)
    assert any(keyword == "WORKDIR" for keyword, _ in steps)
    # the base image's non-root user `ray` is kept: nothing switches to root
    assert not [args for keyword, args in steps if keyword == "USER" and args != "ray"]


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_docker_context_holds_what_the_dockerfile_copies(flavour: str) -> None:
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    assert "*" in ignore, ".dockerignore should start from an empty context"
    for keyword, args in instructions(DOCKERFILES[flavour]):
        if keyword != "COPY":
            continue
        sources = [word for word in args.split()[:-1] if not word.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is ignored"
    for excluded in ("**/.venv", "**/.git", "**/*.zarr", "**/__pycache__"):
        assert excluded in ignore


def test_cpu_dockerfile_installs_cpu_torch_before_the_project() -> None:
    runs = [args for keyword, args in instructions(DOCKERFILES["cpu"]) if keyword == "RUN"]
    torch_step = next(i for i, args in enumerate(runs) if "download.pytorch.org/whl/cpu" in args)
    project_step = next(i for i, args in enumerate(runs) if "./[" in args or " . " in f"{args} ")
    assert torch_step < project_step


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(flavour: str) -> None:
    done = subprocess.run(
        ["hadolint", "--no-color", str(DOCKERFILES[flavour])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- documented commands ---------------------------------------------------------------------------


def shell_commands(path: Path) -> Iterator[str]:
    """Command lines of a document (a Markdown file's fenced blocks, a YAML file's comments),
    with continuation lines joined."""
    text = path.read_text()
    if path.suffix == ".md":
        blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
        text = "\n".join(blocks)
    else:
        text = "\n".join(re.sub(r"^\s*#\s?", "", line) for line in text.splitlines() if "#" in line)
    yield from re.sub(r"\\\n\s*", " ", text).splitlines()


@pytest.mark.parametrize("path", [ROOT / "docs" / "deploy.md", LAUNCHER], ids=lambda p: p.name)
def test_documented_job_commands_parse(path: Path) -> None:
    """Every complete `python jobs/<job>.py ...` line in the docs uses options that exist."""
    from nncd_ray.cli.main import build_parser

    parser = build_parser()
    checked = 0
    for line in shell_commands(path):
        for job in ("matrix", "knn", "study"):
            script = f"jobs/{job}.py"
            if not re.search(rf"python\S*\s+\S*{script}", line) or "..." in line or "…" in line:
                continue
            arguments = job_arguments(line, script)
            try:
                parser.parse_args([job, *arguments])
            except SystemExit:
                pytest.fail(f"{path.name}: `{line.strip()}` does not parse")
            checked += 1
    assert checked >= 1, f"no complete job command found in {path.name}"


@pytest.mark.parametrize("path", [ROOT / "docs" / "deploy.md", ROOT / "README.md"], ids=str)
def test_documented_serve_commands_parse(path: Path) -> None:
    """Every complete `nncd serve ...` / `nncd classify ...` line in the docs parses."""
    from nncd_ray.cli.main import build_parser

    parser = build_parser()
    checked = 0
    for line in shell_commands(path):
        match = re.search(r"\bnncd (serve|classify)\b.*", line)
        if match is None or "..." in line or "…" in line:
            continue
        words = shlex.split(match.group(0).split(" && ")[0].split(" & ")[0])
        try:
            parser.parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"{path.name}: `{line.strip()}` does not parse")
        checked += 1
    assert checked >= 2, f"no complete serve/classify command found in {path.name}"


SCRIPTS = sorted((ROOT / "cluster").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_cluster_scripts_parse_and_name_real_flags(script: Path) -> None:
    """Each shell script parses, and every flag it gives a ``python3 -m nncd_ray...`` command is
    one that command's ``--help`` lists (a renamed flag breaks this test, not a GPU session)."""
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text().replace("\\\n", " ")
    commands = re.findall(r"python3? -m (nncd_ray[\w.]+)([^\n>|&;]*)", text)
    for module, arguments in commands:
        flags = set(re.findall(r"(--[\w-]+)", arguments))
        subcommand = re.match(r"\s*([a-z]+)\b(?!-)", arguments)  # e.g. nncd_ray.cli.main matrix
        command = [sys.executable, "-m", module, *([subcommand[1]] if subcommand else [])]
        usage = subprocess.run(
            [*command, "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert flags <= set(re.findall(r"--[\w-]+", usage)), (module, flags)
