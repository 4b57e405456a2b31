"""DockerBuilder and DockerRunner against a real dockerd (BuildKit) and a real registry with htpasswd auth.

The image built here comes FROM the session's Debian base in the registry (`registry_debian_base`), is
pushed by the builder and then run by digest by the runner, as the pipeline does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.fixtures.docker import DockerEngineServer
from tests.fixtures.registry import RegistryServer, make_tls_files, push_test_image, start_registry
from thinkube_pipelines.builders.base import (
    BuildContext,
    BuildError,
    BuildRequest,
    BuildResult,
    RegistryAccess,
    RegistryAuth,
    RunError,
    RunRequest,
)
from thinkube_pipelines.builders.docker import RUN_LABEL, DockerBuilder, DockerRunner
from thinkube_pipelines.builders.streamed import REDACTED
from thinkube_pipelines.registry.client import RegistryClient

REPOSITORY = "library/docker-built"
LABELS = {
    "org.opencontainers.image.title": "Docker built",
    "io.thinkube.image.name": "docker-built",
    "io.thinkube.gpu_required": "false",
}
GREETING = "hello from a build arg"


def _access(registry: RegistryServer, password: str | None = None) -> RegistryAccess:
    auth = RegistryAuth(registry.host, registry.username, password or registry.password)
    # The session registry speaks plain HTTP on 127.0.0.1, which the engine counts as insecure.
    return RegistryAccess(auth=auth, tls_verify=False)


def _context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> BuildContext:
    folder = tmp_path / "image"
    (folder / "docker").mkdir(parents=True)
    (folder / "docker" / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    return BuildContext.from_folder(folder, dockerfile="docker/Dockerfile")


def _run(runner: DockerRunner, registry: RegistryServer, image: str, argv: list[str], **kwargs):
    lines: list[str] = []
    request = RunRequest(image=image, argv=argv, registry=_access(registry), **kwargs)
    return runner.run(request, lines.append), lines


def _run_containers(engine: DockerEngineServer) -> list[str]:
    listed = engine.docker("ps", "--all", "--quiet", "--filter", f"label={RUN_LABEL}")
    assert listed.returncode == 0, listed.stdout
    return listed.stdout.split()


def _config_folders() -> set[str]:
    return {path.name for path in Path(tempfile.gettempdir()).glob("thinkube-docker-config-*")}


@pytest.fixture(scope="module")
def docker_builder(docker_engine: DockerEngineServer) -> DockerBuilder:
    return DockerBuilder(docker=docker_engine.client, docker_host=docker_engine.host)


@pytest.fixture(scope="module")
def docker_runner(docker_engine: DockerEngineServer) -> DockerRunner:
    return DockerRunner(docker=docker_engine.client, docker_host=docker_engine.host)


@pytest.fixture(scope="module")
def built(
    docker_builder: DockerBuilder,
    registry: RegistryServer,
    registry_debian_base: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[BuildRequest, BuildResult, list[str], set[str]]:
    """One image FROM the Debian base, with a build arg and labels, built and pushed; its request,
    result, every streamed line, and the temporary config folders that existed before it."""
    dockerfile = (
        "ARG BASE\n"
        "FROM ${BASE}\n"
        "ARG GREETING=unset\n"
        'RUN echo "$GREETING" > /greeting && echo "greeting written"\n'
        "COPY app.py /app.py\n"
    )
    context = _context(
        tmp_path_factory.mktemp("built"), dockerfile, {"app.py": "print(open('/greeting').read().strip())\n"}
    )
    request = BuildRequest(
        image_name="docker-built",
        context=context,
        build_args={"BASE": registry_debian_base, "GREETING": GREETING},
        target=f"{registry.host}/{REPOSITORY}:build-1",
        labels=LABELS,
        registry=_access(registry),
    )
    before = _config_folders()
    lines: list[str] = []
    result = docker_builder.build(request, lines.append)
    return request, result, lines, before


def test_build_pushes_the_digest_the_registry_serves(built, registry: RegistryServer) -> None:
    request, result, _, _ = built
    client = RegistryClient(registry.url, registry.username, registry.password)
    assert result.reference == request.target
    assert result.digest.startswith("sha256:")
    assert client.digest_of(REPOSITORY, "build-1") == result.digest
    assert result.duration_s > 0
    assert any(result.digest in line for line in result.log_tail)


def test_labels_are_in_the_pushed_config_without_a_layer_of_their_own(
    built, registry: RegistryServer, registry_debian_base: str
) -> None:
    _, result, _, _ = built
    client = RegistryClient(registry.url, registry.username, registry.password)
    facts = client.image_facts(REPOSITORY, result.digest)
    for key, value in LABELS.items():
        assert facts.labels.get(key) == value
    base_repository, _, base_digest = registry_debian_base.partition("/")[2].partition("@")
    base_layers = client.manifest(base_repository, base_digest).layers
    # The base's layers, one for RUN and one for COPY: three labels added none.
    assert len(client.manifest(REPOSITORY, result.digest).layers) == len(base_layers) + 2


def test_every_line_is_streamed_and_no_secret_reaches_one(built, registry: RegistryServer) -> None:
    request, _, lines, before = built
    assert any("[2/3] RUN" in line for line in lines)  # the build's own progress
    assert any("greeting written" in line for line in lines)  # what the RUN step printed
    assert any("build-1: digest: sha256:" in line for line in lines)  # the push's output
    for secret in request.registry.secrets():
        assert not any(secret in line for line in lines)
    # The temporary DOCKER_CONFIG holding the credentials is gone.
    assert _config_folders() == before


def test_runner_runs_the_pushed_image_by_digest(
    built, docker_runner: DockerRunner, registry: RegistryServer
) -> None:
    _, result, _, _ = built
    image = f"{registry.host}/{REPOSITORY}@{result.digest}"
    ran, lines = _run(docker_runner, registry, image, ["python3", "/app.py"])
    assert ran.returncode == 0, ran.output
    assert ran.output == f"{GREETING}\n"
    assert GREETING in lines
    assert not any(registry.password in line for line in lines)


def test_a_failing_command_is_returned_not_raised(
    built, docker_runner: DockerRunner, registry: RegistryServer, docker_engine: DockerEngineServer
) -> None:
    _, result, _, _ = built
    image = f"{registry.host}/{REPOSITORY}@{result.digest}"
    ran, _ = _run(docker_runner, registry, image, ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"])
    assert ran.returncode == 7
    assert "to-stdout\n" in ran.output
    assert "to-stderr\n" in ran.output
    assert _run_containers(docker_engine) == []


def test_the_container_has_no_network(built, docker_runner: DockerRunner, registry: RegistryServer) -> None:
    _, result, _, _ = built
    image = f"{registry.host}/{REPOSITORY}@{result.digest}"
    ran, _ = _run(docker_runner, registry, image, ["sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1"])
    assert ran.returncode == 0, ran.output
    assert ran.output.split() == ["lo"]


def test_a_command_past_its_time_limit_gives_124_and_leaves_no_container(
    built, docker_runner: DockerRunner, registry: RegistryServer, docker_engine: DockerEngineServer
) -> None:
    _, result, _, _ = built
    image = f"{registry.host}/{REPOSITORY}@{result.digest}"
    started = time.monotonic()
    ran, _ = _run(docker_runner, registry, image, ["sh", "-c", "echo started; sleep 300"], timeout_s=3)
    assert ran.returncode == 124
    assert "started" in ran.output
    assert time.monotonic() - started < 120  # not the 300 s of the sleep (vfs: ~30 s to set up)
    assert _run_containers(docker_engine) == []


def test_a_tag_reference_is_refused_before_anything_runs(registry: RegistryServer) -> None:
    with pytest.raises(ValueError, match="not a digest reference"):
        RunRequest(image=f"{registry.host}/{REPOSITORY}:build-1", argv=["true"], registry=_access(registry))


def test_gpus_on_an_engine_without_a_gpu_runtime_is_a_run_error(
    built, docker_runner: DockerRunner, registry: RegistryServer, docker_engine: DockerEngineServer
) -> None:
    _, result, _, _ = built
    image = f"{registry.host}/{REPOSITORY}@{result.digest}"
    started = time.monotonic()
    with pytest.raises(RunError, match=r"1 GPU\(s\): the engine has no GPU runtime") as error:
        _run(docker_runner, registry, image, ["true"], gpus=1, timeout_s=120)
    assert time.monotonic() - started < 60
    assert "NVIDIA Container Toolkit" in str(error.value)
    assert _run_containers(docker_engine) == []


def test_a_failing_run_step_names_the_step(
    docker_builder: DockerBuilder, registry: RegistryServer, registry_debian_base: str, tmp_path: Path
) -> None:
    dockerfile = (
        f"FROM {registry_debian_base}\n"
        "RUN echo first > /first\n"
        "RUN echo about-to-fail && exit 3\n"
        "RUN echo never-reached\n"
        "COPY app.py /app.py\n"
    )
    request = BuildRequest(
        image_name="docker-failing",
        context=_context(tmp_path, dockerfile, {"app.py": "print(1)\n"}),
        target=f"{registry.host}/library/docker-failing:build-1",
        registry=_access(registry),
    )
    lines: list[str] = []
    with pytest.raises(BuildError) as raised:
        docker_builder.build(request, lines.append)
    error = raised.value
    assert error.step == "[3/5] RUN echo about-to-fail && exit 3"
    assert "[3/5] RUN echo about-to-fail && exit 3" in str(error)
    assert any("about-to-fail" in line for line in error.log_tail)
    assert not any("never-reached" in line for line in lines)
    client = RegistryClient(registry.url, registry.username, registry.password)
    assert client.digest_of("library/docker-failing", "build-1") is None


def test_a_wrong_password_fails_the_push_clearly(
    docker_builder: DockerBuilder, registry: RegistryServer, tmp_path: Path
) -> None:
    wrong = "not-the-password-" + registry.password[:4]
    request = BuildRequest(
        image_name="docker-denied",
        context=_context(tmp_path, "FROM scratch\nCOPY app.py /app.py\n", {"app.py": "print(1)\n"}),
        target=f"{registry.host}/library/docker-denied:build-1",
        registry=_access(registry, password=wrong),
    )
    lines: list[str] = []
    with pytest.raises(BuildError) as raised:
        docker_builder.build(request, lines.append)
    error = raised.value
    assert error.step == f"push to registry {registry.host}"
    assert f"the registry {registry.host} refused the credentials" in str(error)
    assert any("unauthorized" in line.lower() for line in error.log_tail)
    assert not any(wrong in line for line in lines)
    client = RegistryClient(registry.url, registry.username, registry.password)
    assert client.digest_of("library/docker-denied", "build-1") is None


def test_a_wrong_password_fails_the_pull_clearly(
    docker_runner: DockerRunner, registry: RegistryServer
) -> None:
    # An image the engine has never pulled: a digest it already holds is used without asking the registry.
    digest = push_test_image(registry, "library/docker-unpulled", "v1", b"never pulled before\n")
    wrong = "not-the-password-" + registry.password[:4]
    request = RunRequest(
        image=f"{registry.host}/library/docker-unpulled@{digest}",
        argv=["true"],
        registry=_access(registry, password=wrong),
    )
    lines: list[str] = []
    with pytest.raises(RunError, match=f"could not pull .* from registry {registry.host}") as raised:
        docker_runner.run(request, lines.append)
    assert f"the registry {registry.host} refused the credentials" in str(raised.value)
    assert not any(wrong in line for line in lines)


def test_a_registry_ca_for_a_remote_engine_is_an_error_not_ignored(
    registry: RegistryServer, tmp_path: Path
) -> None:
    access = replace(
        _access(registry), ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    )
    remote = {"docker_host": "tcp://build-host.invalid:2376", "certs_dir": str(tmp_path)}
    request = RunRequest(
        image=f"{registry.host}/{REPOSITORY}@sha256:{'0' * 64}", argv=["true"], registry=access
    )
    with pytest.raises(
        RunError, match=f"install the CA at {tmp_path}/{registry.host}/ca.crt on the engine's host"
    ):
        DockerRunner(**remote).run(request)
    build = BuildRequest(
        image_name="docker-ca",
        context=_context(tmp_path, "FROM scratch\n"),
        target=f"{registry.host}/library/docker-ca:build-1",
        registry=access,
    )
    with pytest.raises(BuildError, match="registry_ca='preinstalled'"):
        DockerBuilder(**remote).build(build)
    assert not (tmp_path / registry.host).exists()


def test_redaction_marker_is_what_replaces_a_secret(
    docker_builder: DockerBuilder, registry: RegistryServer, tmp_path: Path
) -> None:
    """A build whose own output prints the password: the line arrives with the password masked."""
    request = BuildRequest(
        image_name="docker-echo",
        context=_context(tmp_path, "FROM scratch\nARG LEAK\nCOPY app.py /${LEAK}.py\n", {"app.py": "x\n"}),
        build_args={"LEAK": registry.password},
        target=f"{registry.host}/library/docker-echo:build-1",
        registry=_access(registry),
    )
    lines: list[str] = []
    docker_builder.build(request, lines.append)
    assert any(REDACTED in line for line in lines)
    assert not any(registry.password in line for line in lines)


# -- a registry with a private CA -----------------------------------------------------------------------
# The engine counts 127.0.0.0/8 as insecure and would skip certificate checks there, so the TLS registry is
# reached through this machine's own non-loopback address, where the engine must trust the CA.


def _outbound_address() -> str | None:
    """This machine's non-loopback IPv4 address (a UDP `connect` sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


class _Relay:
    """Forwards TCP connections from `address`:(a free port) to 127.0.0.1:`target_port`, bytes unchanged."""

    def __init__(self, address: str, target_port: int):
        self.listener = socket.create_server((address, 0))
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


@dataclass(frozen=True)
class _TlsRegistry:
    server: RegistryServer
    host: str
    """`address:port` as the engine reaches it."""
    ca_pem: str
    certs: Path
    """Where the engine reads this host's CA."""

    def access(self, *, with_ca: bool) -> RegistryAccess:
        auth = RegistryAuth(self.host, self.server.username, self.server.password)
        return RegistryAccess(auth=auth, tls_verify=True, ca_pem=self.ca_pem if with_ca else None)

    def client(self) -> RegistryClient:
        return RegistryClient(
            self.server.url, self.server.username, self.server.password, verify_tls=str(self.server.ca_file)
        )


@pytest.fixture(scope="module")
def tls_registry_far(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_TlsRegistry]:
    address = _outbound_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to reach a TLS registry at")
    root = tmp_path_factory.mktemp("tls-registry")
    files = make_tls_files(root / "tls", hosts=(address, "127.0.0.1"))
    with start_registry(root / "registry", tls=files) as running:
        relay = _Relay(address, int(running.host.rpartition(":")[2]))
        host = f"{address}:{relay.port}"
        certs = Path(DockerRunner().certs_dir) / host
        try:
            yield _TlsRegistry(running.server, host, files.ca_file.read_text(), certs)
        finally:
            relay.close()
            shutil.rmtree(certs, ignore_errors=True)


@pytest.fixture
def untrusted(tls_registry_far: _TlsRegistry) -> Iterator[_TlsRegistry]:
    """The TLS registry, with the engine not trusting its CA before nor after the test."""
    shutil.rmtree(tls_registry_far.certs, ignore_errors=True)
    yield tls_registry_far
    shutil.rmtree(tls_registry_far.certs, ignore_errors=True)


def _shell_rootfs(folder: Path) -> None:
    """A tiny root filesystem with this machine's /bin/sh and the libraries it loads."""
    binary = Path(os.path.realpath("/bin/sh"))
    needed = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    for source in [binary, *(Path(path) for path in re.findall(r"(/\S+) \(0x", needed))]:
        inside = folder / ("bin/sh" if source == binary else str(source).lstrip("/"))
        inside.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(source), inside)


def _shell_image_request(tmp_path: Path, tls: _TlsRegistry, *, with_ca: bool) -> BuildRequest:
    folder = tmp_path / "image"
    _shell_rootfs(folder / "rootfs")
    (folder / "Dockerfile").write_text("FROM scratch\nCOPY rootfs/ /\n")
    return BuildRequest(
        image_name="docker-tls",
        context=BuildContext.from_folder(folder),
        target=f"{tls.host}/library/docker-tls:build-1",
        registry=tls.access(with_ca=with_ca),
    )


def test_without_its_ca_a_tls_registry_is_refused_clearly(
    docker_builder: DockerBuilder, docker_runner: DockerRunner, untrusted: _TlsRegistry, tmp_path: Path
) -> None:
    with pytest.raises(BuildError) as raised:
        docker_builder.build(_shell_image_request(tmp_path, untrusted, with_ca=False))
    assert raised.value.step == f"push to registry {untrusted.host}"
    assert f"the engine does not trust {untrusted.host}'s TLS certificate" in str(raised.value)
    assert untrusted.client().digest_of("library/docker-tls", "build-1") is None

    digest = push_test_image(untrusted.server, "library/docker-tls-pull", "v1", b"over TLS\n")
    request = RunRequest(
        image=f"{untrusted.host}/library/docker-tls-pull@{digest}",
        argv=["true"],
        registry=untrusted.access(with_ca=False),
    )
    with pytest.raises(RunError, match=f"does not trust {re.escape(untrusted.host)}'s TLS certificate"):
        docker_runner.run(request)
    assert not untrusted.certs.exists()


def test_with_its_ca_the_engine_pushes_to_and_pulls_from_a_tls_registry(
    docker_builder: DockerBuilder,
    docker_runner: DockerRunner,
    docker_engine: DockerEngineServer,
    untrusted: _TlsRegistry,
    tmp_path: Path,
) -> None:
    result = docker_builder.build(_shell_image_request(tmp_path, untrusted, with_ca=True))
    assert untrusted.client().digest_of("library/docker-tls", "build-1") == result.digest
    assert (untrusted.certs / "ca.crt").read_text() == untrusted.ca_pem

    # Forget the image, so that the runner has to pull it over TLS.
    image = f"{untrusted.host}/library/docker-tls@{result.digest}"
    removed = docker_engine.docker("rmi", "--force", result.reference)
    assert removed.returncode == 0, removed.stdout
    assert docker_engine.docker("image", "inspect", image).returncode != 0
    request = RunRequest(
        image=image, argv=["/bin/sh", "-c", "echo over-tls"], registry=untrusted.access(with_ca=True)
    )
    ran = docker_runner.run(request)
    assert (ran.returncode, ran.output) == (0, "over-tls\n")
