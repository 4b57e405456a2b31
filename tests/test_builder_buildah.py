"""BuildahBuilder and BuildahRunner against real buildah and a real registry: build from a travelling
context, stream, push, rebuild, fail, and run by digest.

Images are tiny (one or two steps on the session's Debian base, which lives in the registry) and nothing is
downloaded from the network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import requests

from tests.fixtures.buildah import base_cache_dir
from tests.fixtures.registry import RegistryServer
from thinkube_pipelines.builders import (
    BuildahBuilder,
    BuildahRunner,
    BuildContext,
    BuildError,
    BuildRequest,
    BuildResult,
    ImageBuilder,
    ImageRunner,
    RegistryAccess,
    RegistryAuth,
    RunError,
    RunRequest,
)
from thinkube_pipelines.registry.client import RegistryClient

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)

TINY_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN echo before-sleep && sleep 2 && echo after-sleep && echo built-by-thinkube > /built.txt
"""


def _access(registry: RegistryServer, password: str | None = None) -> RegistryAccess:
    auth = RegistryAuth(registry.host, registry.username, password or registry.password)
    return RegistryAccess(auth=auth, tls_verify=False)


def _request(registry: RegistryServer, context: Path, base: str, name: str, tag: str, **kw) -> BuildRequest:
    """A request whose context is the folder's archive: the builder never sees the folder itself."""
    return BuildRequest(
        image_name=name,
        context=BuildContext.from_folder(context),
        build_args={"BASE_IMAGE": base},
        target=f"{registry.host}/library/{name}:{tag}",
        labels={
            "org.thinkube.source": tag,
            "org.opencontainers.image.description": 'Say "hi" for $5 \\o/',
            "org.thinkube.third": "3",
        },
        registry=_access(registry),
        **kw,
    )


def _run(runner: BuildahRunner, registry: RegistryServer, image: str, argv: list[str], **kw):
    return runner.run(RunRequest(image=image, argv=argv, registry=_access(registry)), **kw)


def _config(registry: RegistryServer, repository: str, digest: str) -> dict:
    client = RegistryClient(registry.url, registry.username, registry.password)
    manifest = client.manifest(repository, digest)
    return json.loads(client.blob(repository, manifest.config_digest))


def _served(registry: RegistryServer, repository: str, tag: str) -> requests.Response:
    response = requests.get(
        f"{registry.url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": MANIFEST_ACCEPT},
        auth=(registry.username, registry.password),
        timeout=10,
    )
    response.raise_for_status()
    return response


def _working_containers(builder: BuildahBuilder) -> list[str]:
    """Containers left in the builder's storage (each one a root filesystem copy with vfs)."""
    argv = builder.buildah_argv(
        "containers", "--all", "--noheading", "--format", "{{.ImageName}} {{.ContainerName}}"
    )
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split("\n")[:-1]


@dataclass
class TinyBuild:
    request: BuildRequest
    result: BuildResult
    lines: list[tuple[float, str]]
    finished_at: float


@pytest.fixture(scope="module")
def tiny_build(
    tmp_path_factory: pytest.TempPathFactory,
    buildah_builder: BuildahBuilder,
    registry_debian_base: str,
    registry: RegistryServer,
) -> TinyBuild:
    """The tiny image, built cold and pushed once for this module; every log line stamped on arrival."""
    context = tmp_path_factory.mktemp("tiny")
    (context / "Dockerfile").write_text(TINY_DOCKERFILE)
    request = _request(registry, context, registry_debian_base, "tiny", "src-0001")
    lines: list[tuple[float, str]] = []
    result = buildah_builder.build(request, lambda line: lines.append((time.monotonic(), line)))
    return TinyBuild(request, result, lines, time.monotonic())


def test_pushed_digest_is_what_the_registry_serves(tiny_build: TinyBuild, registry: RegistryServer) -> None:
    result = tiny_build.result
    assert result.reference == tiny_build.request.target
    served = _served(registry, "library/tiny", "src-0001")
    assert served.headers["Docker-Content-Digest"] == result.digest
    assert served.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    # The digest is the manifest's own: fetching by digest gives the same bytes.
    by_digest = _served(registry, "library/tiny", result.digest)
    assert by_digest.content == served.content

    assert result.duration_s > 2  # the RUN step sleeps 2 s
    assert 0 < len(result.log_tail) <= 40
    # What the image is comes from the registry: its config holds the labels and the creation time.
    facts = RegistryClient(registry.url, registry.username, registry.password).image_facts(
        "library/tiny", result.digest
    )
    assert facts.labels["org.thinkube.source"] == "src-0001"
    assert facts.created is not None and abs(time.time() - facts.created.timestamp()) < 600


def test_labels_cost_one_step_not_one_each(tiny_build: TinyBuild, registry: RegistryServer) -> None:
    steps = [line for _, line in tiny_build.lines if "STEP " in line]
    labels = [line for line in steps if ": LABEL " in line]
    assert len(tiny_build.request.labels) == 3
    assert len(steps) == 3 and len(labels) == 1, steps  # FROM, RUN, and one LABEL step for all labels
    facts = RegistryClient(registry.url, registry.username, registry.password).image_facts(
        "library/tiny", tiny_build.result.digest
    )
    for key, value in tiny_build.request.labels.items():  # quotes, `$` and backslashes kept as written
        assert facts.labels[key] == value


def test_log_lines_arrive_while_the_build_runs(tiny_build: TinyBuild) -> None:
    stamps = {line: stamp for stamp, line in tiny_build.lines}
    texts = [line for _, line in tiny_build.lines]
    assert any(line.startswith("STEP 1/") for line in texts), texts[:5]
    assert "before-sleep" in stamps and "after-sleep" in stamps
    # Streamed, not collected at the end: the RUN step's first line came ~2 s before its last one ...
    assert stamps["after-sleep"] - stamps["before-sleep"] > 1.5
    # ... and the first line long before the build (and push) finished.
    assert tiny_build.finished_at - tiny_build.lines[0][0] > 2.0
    # The push streams too, and every line is in the order buildah printed it.
    assert any("Writing manifest" in line for line in texts)
    # (the FROM pull writes a manifest too: the push's is the last one)
    pushed = max(i for i, t in enumerate(texts) if "Writing manifest" in t)
    assert texts.index("after-sleep") < pushed


def test_rebuild_without_change_gives_the_same_digest_and_uploads_nothing(
    tiny_build: TinyBuild, buildah_builder: BuildahBuilder, registry: RegistryServer
) -> None:
    mark = registry.mark()
    lines: list[str] = []
    again = buildah_builder.build(tiny_build.request, lines.append)
    assert again.digest == tiny_build.result.digest
    assert any("Using cache" in line for line in lines)
    assert "before-sleep" not in lines  # the RUN step did not run again
    assert registry.blob_uploads(since=mark) == 0
    assert _served(registry, "library/tiny", "src-0001").headers["Docker-Content-Digest"] == again.digest
    assert again.duration_s < tiny_build.result.duration_s


def test_failing_step_is_named_with_the_log_tail(
    tmp_path: Path, buildah_builder: BuildahBuilder, registry_debian_base: str, registry: RegistryServer
) -> None:
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo fine\n"
        "RUN echo about-to-fail && exit 3\nRUN echo never-reached\n"
    )
    lines: list[str] = []
    mark = registry.mark()
    request = _request(registry, tmp_path, registry_debian_base, "broken", "src-0002")
    with pytest.raises(BuildError) as raised:
        buildah_builder.build(request, lines.append)
    error = raised.value
    assert error.step == "STEP 3/5: RUN echo about-to-fail && exit 3"
    assert "image broken" in str(error) and "STEP 3/5: RUN echo about-to-fail && exit 3" in str(error)
    assert "about-to-fail" in error.log_tail
    assert "never-reached" not in "\n".join(lines)
    assert _working_containers(buildah_builder) == []  # --force-rm: a failed build leaves no container
    assert "about-to-fail" in str(error)  # the tail is in the message too
    assert registry.blob_uploads("library/broken", since=mark) == 0  # nothing was pushed
    assert registry.manifest_puts("library/broken", since=mark) == 0
    with pytest.raises(requests.HTTPError):
        _served(registry, "library/broken", "src-0002")


def test_ca_bundle_reaches_run_steps_but_never_the_image(
    tmp_path: Path,
    buildah_builder: BuildahBuilder,
    buildah_runner: BuildahRunner,
    registry_debian_base: str,
    registry: RegistryServer,
) -> None:
    marker = f"THINKUBE-DUMMY-CA-{secrets.token_hex(8)}"
    dummy = tmp_path / "proxy-ca.pem"
    dummy.write_text(f"-----BEGIN CERTIFICATE-----\n{marker}\n-----END CERTIFICATE-----\n")
    builder = buildah_builder.model_copy(update={"ca_bundle": str(dummy)})
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
        "RUN test -s /etc/ssl/certs/ca-certificates.crt"
        " && python3 -c \"print(open('/etc/ssl/certs/ca-certificates.crt').read())\""
        " && cp /etc/ssl/certs/ca-certificates.crt /seen-during-build.pem\n"
    )
    lines: list[str] = []
    result = builder.build(
        _request(registry, context, registry_debian_base, "ca-check", "src-0003"), lines.append
    )
    assert marker in lines  # printed by python3 inside the RUN step: the mount was there

    base = _run(buildah_runner, registry, registry_debian_base, ["cat", "/etc/ssl/certs/ca-certificates.crt"])
    assert base.returncode == 0, base.output
    assert marker not in base.output and "BEGIN CERTIFICATE" in base.output
    probe = _run(
        buildah_runner,
        registry,
        f"{registry.host}/library/ca-check@{result.digest}",
        [
            "sh",
            "-c",
            'cat /seen-during-build.pem; echo "=== kept"; cat /etc/ssl/certs/ca-certificates.crt; '
            'echo "=== holding the marker"; '
            f"grep -rlsF --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev {marker} / || true",
        ],
    )
    assert probe.returncode == 0, probe.output
    seen, rest = probe.output.split("=== kept\n")
    kept, holding = rest.split("=== holding the marker\n")
    # The RUN step saw exactly the mounted file ...
    assert seen == dummy.read_text()
    # ... yet the image keeps the base's own bundle, and no other file anywhere holds the dummy's content.
    assert kept == base.output
    assert holding.split() == ["/seen-during-build.pem"]
    # Nor the image's config or history: no environment variable, no build arg, no path.
    config = _config(registry, "library/ca-check", result.digest)
    recorded = json.dumps(config)
    assert str(dummy) not in recorded and marker not in recorded
    for variable in config["config"].get("Env", []):
        assert not variable.startswith(("SSL_CERT_FILE=", "PIP_CERT=", "REQUESTS_CA_BUNDLE=")), variable


def test_run_pulls_the_digest_and_returns_output_and_exit_code(
    tiny_build: TinyBuild, buildah_runner: BuildahRunner, registry: RegistryServer
) -> None:
    image = f"{registry.host}/library/tiny@{tiny_build.result.digest}"
    mark = registry.mark()
    ok = _run(buildah_runner, registry, image, ["python3", "-c", "print(open('/built.txt').read())"])
    assert ok.returncode == 0
    assert ok.output.strip() == "built-by-thinkube"
    assert registry.requests("GET", rf"/manifests/{tiny_build.result.digest}$", since=mark), (
        "pulled by digest"
    )

    streamed: list[str] = []
    failed = _run(
        buildah_runner,
        registry,
        image,
        ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"],
        on_line=streamed.append,
    )
    assert failed.returncode == 7
    # buildah relays the two streams through separate pipes: their relative order is not kept.
    assert sorted(failed.output.splitlines()) == ["to-stderr", "to-stdout"]
    assert {"to-stdout", "to-stderr"} <= set(streamed)
    timed_out = buildah_runner.run(
        RunRequest(image=image, argv=["sleep", "30"], timeout_s=2, registry=_access(registry))
    )
    assert timed_out.returncode == 124
    assert _working_containers(buildah_runner) == []


def test_run_refuses_tags_gpus_and_unknown_digests(
    tiny_build: TinyBuild, buildah_runner: BuildahRunner, registry: RegistryServer
) -> None:
    with pytest.raises(ValueError, match="not a digest reference"):
        RunRequest(image=tiny_build.result.reference, argv=["true"])
    image = f"{registry.host}/library/tiny@{tiny_build.result.digest}"
    with pytest.raises(RunError, match="GPUs"):
        buildah_runner.run(RunRequest(image=image, argv=["true"], gpus=1, registry=_access(registry)))
    missing = f"{registry.host}/library/tiny@sha256:{'0' * 64}"
    with pytest.raises(RunError, match="could not pull"):
        _run(buildah_runner, registry, missing, ["true"])


def test_wrong_password_names_the_registry_and_hides_the_password(
    tiny_build: TinyBuild, buildah_builder: BuildahBuilder, registry: RegistryServer
) -> None:
    wrong = f"wrong-{secrets.token_urlsafe(12)}"
    request = dataclasses.replace(tiny_build.request, registry=_access(registry, wrong))
    assert wrong not in repr(request)
    lines: list[str] = []
    with pytest.raises(BuildError) as raised:
        buildah_builder.build(request, lines.append)
    error = raised.value
    assert registry.host in str(error)
    assert error.step == f"push to registry {registry.host}"
    for text in (str(error), repr(error), "\n".join(error.log_tail), "\n".join(lines)):
        assert wrong not in text
        assert registry.password not in text


def test_docker_format_pushes_a_docker_manifest(
    tmp_path: Path, buildah_builder: BuildahBuilder, registry_debian_base: str, registry: RegistryServer
) -> None:
    builder = buildah_builder.model_copy(update={"format": "docker"})
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo docker > /format.txt\n"
    )
    result = builder.build(_request(registry, tmp_path, registry_debian_base, "tiny-docker", "src-0004"))
    served = _served(registry, "library/tiny-docker", "src-0004")
    assert served.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert served.headers["Docker-Content-Digest"] == result.digest


@dg.asset
def built_and_run_by_any_implementation(builder: ImageBuilder, runner: ImageRunner) -> str:
    return f"{type(builder).__name__} {type(runner).__name__}"


def test_implementations_are_accepted_where_an_asset_asks_for_the_interfaces(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        ImageBuilder()  # the interfaces themselves cannot be configured
    with pytest.raises(TypeError):
        ImageRunner()
    storage = {"storage_root": str(tmp_path / "root"), "run_root": str(tmp_path / "run")}
    outcome = dg.materialize(
        [built_and_run_by_any_implementation],
        resources={"builder": BuildahBuilder(**storage), "runner": BuildahRunner(**storage)},
    )
    assert outcome.success
    assert outcome.output_for_node("built_and_run_by_any_implementation") == "BuildahBuilder BuildahRunner"


def test_the_context_travels_as_reproducible_bytes(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "tool").write_text("#!/bin/sh\n")
    (tmp_path / "tool").chmod(0o755)
    first = BuildContext.from_folder(tmp_path)
    os.utime(tmp_path / "Dockerfile", (1, 1))  # a checkout elsewhere: other times, same content
    assert BuildContext.from_folder(tmp_path) == first
    unpacked = first.extract_to(tmp_path / "unpacked")
    assert (unpacked / "tool").stat().st_mode & 0o111 and (
        unpacked / "Dockerfile"
    ).read_text() == "FROM scratch\n"
    (tmp_path / "Dockerfile").write_text("FROM scratch\nRUN true\n")
    assert BuildContext.from_folder(tmp_path).digest != first.digest
    tampered = dataclasses.replace(first, archive=first.archive + b"\0")
    with pytest.raises(ValueError, match="archive digest"):
        tampered.extract_to(tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_debian_base_rootfs_is_cached_as_one_tar_file(registry_debian_base: str) -> None:
    """A cache entry that is not a tar file would break the next machine that reads the cache."""
    cached = sorted(base_cache_dir().glob("debian-bookworm-*.tar"))
    assert cached, f"no cached rootfs under {base_cache_dir()}"
    assert all(path.is_file() and tarfile.is_tarfile(path) for path in cached), cached
