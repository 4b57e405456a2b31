"""BuildahBuilder against real buildah and a real registry: build, stream, push, rebuild, fail, run.

Images are tiny (one or two steps on the session's Debian base) and nothing is downloaded from the network.
"""

from __future__ import annotations

import json
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
    BuildError,
    BuildRequest,
    BuildResult,
    ImageBuilder,
    RegistryAuth,
)

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


def _request(registry: RegistryServer, context: Path, base: str, name: str, tag: str, **kw) -> BuildRequest:
    return BuildRequest(
        image_name=name,
        context_dir=context,
        dockerfile=context / "Dockerfile",
        build_args={"BASE_IMAGE": base},
        target=f"{registry.host}/library/{name}:{tag}",
        labels={"org.thinkube.source": tag},
        push_auth=RegistryAuth(registry.host, registry.username, registry.password),
        tls_verify=False,
        **kw,
    )


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
    debian_base: str,
    registry: RegistryServer,
) -> TinyBuild:
    """The tiny image, built cold and pushed once for this module; every log line stamped on arrival."""
    context = tmp_path_factory.mktemp("tiny")
    (context / "Dockerfile").write_text(TINY_DOCKERFILE)
    request = _request(registry, context, debian_base, "tiny", "src-0001")
    lines: list[tuple[float, str]] = []
    result = buildah_builder.build(request, lambda line: lines.append((time.monotonic(), line)))
    return TinyBuild(request, result, lines, time.monotonic())


def test_pushed_digest_is_what_the_registry_serves(
    tiny_build: TinyBuild, buildah_builder: BuildahBuilder, debian_base: str, registry: RegistryServer
) -> None:
    result = tiny_build.result
    assert result.reference == tiny_build.request.target
    served = _served(registry, "library/tiny", "src-0001")
    assert served.headers["Docker-Content-Digest"] == result.digest
    assert served.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    # The digest is the manifest's own: fetching by digest gives the same bytes.
    by_digest = _served(registry, "library/tiny", result.digest)
    assert by_digest.content == served.content

    # FROM resolved to the session's Debian base, and the builder says which one.
    assert result.base_digest == buildah_builder.inspect_image(debian_base)["FromImageDigest"]
    assert result.created.tzinfo is not None and result.created.utcoffset().total_seconds() == 0
    assert abs(time.time() - result.created.timestamp()) < 600
    assert result.duration_s > 2  # the RUN step sleeps 2 s
    assert result.image_id and len(result.image_id) == 64
    assert 0 < len(result.log_tail) <= 40
    labels = buildah_builder.inspect_image(result.reference)["OCIv1"]["config"]["Labels"]
    assert labels["org.thinkube.source"] == "src-0001"


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
    assert texts.index("after-sleep") < next(i for i, t in enumerate(texts) if "Writing manifest" in t)


def test_rebuild_without_change_gives_the_same_digest_and_pushes_nothing(
    tiny_build: TinyBuild, buildah_builder: BuildahBuilder, registry: RegistryServer
) -> None:
    blobs_before = registry.blob_count()
    lines: list[str] = []
    again = buildah_builder.build(tiny_build.request, lines.append)
    assert again.digest == tiny_build.result.digest
    assert again.image_id == tiny_build.result.image_id
    assert any("Using cache" in line for line in lines)
    assert "before-sleep" not in lines  # the RUN step did not run again
    assert registry.blob_count() == blobs_before
    assert _served(registry, "library/tiny", "src-0001").headers["Docker-Content-Digest"] == again.digest
    assert again.duration_s < tiny_build.result.duration_s


def test_failing_step_is_named_with_the_log_tail(
    tmp_path: Path, buildah_builder: BuildahBuilder, debian_base: str, registry: RegistryServer
) -> None:
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo fine\n"
        "RUN echo about-to-fail && exit 3\nRUN echo never-reached\n"
    )
    lines: list[str] = []
    request = _request(registry, tmp_path, debian_base, "broken", "src-0002")
    with pytest.raises(BuildError) as raised:
        buildah_builder.build(request, lines.append)
    error = raised.value
    assert error.step == "STEP 3/5: RUN echo about-to-fail && exit 3"
    assert "image broken" in str(error) and "STEP 3/5: RUN echo about-to-fail && exit 3" in str(error)
    assert "about-to-fail" in error.log_tail
    assert "never-reached" not in "\n".join(lines)
    assert _working_containers(buildah_builder) == []  # --force-rm: a failed build leaves no container
    assert "about-to-fail" in str(error)  # the tail is in the message too
    assert requests.get(
        f"{registry.url}/v2/library/broken/tags/list", auth=(registry.username, registry.password), timeout=10
    ).status_code in (404, 200)
    with pytest.raises(requests.HTTPError):
        _served(registry, "library/broken", "src-0002")


def test_ca_bundle_reaches_run_steps_but_never_the_image(
    tmp_path: Path, buildah_builder: BuildahBuilder, debian_base: str, registry: RegistryServer
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
    result = builder.build(_request(registry, context, debian_base, "ca-check", "src-0003"), lines.append)
    assert marker in lines  # printed by python3 inside the RUN step: the mount was there

    # One container per image (with vfs each is a full copy of the root filesystem).
    base = builder.run(debian_base, ["cat", "/etc/ssl/certs/ca-certificates.crt"])
    assert base.returncode == 0, base.output
    assert marker not in base.output and "BEGIN CERTIFICATE" in base.output
    probe = builder.run(
        result.reference,
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
    # Nor the image's config, history or annotations: no environment variable, no build arg, no path.
    info = builder.inspect_image(result.reference)
    recorded = json.dumps(
        [info["OCIv1"], info.get("Docker"), info.get("History"), info.get("ImageAnnotations")]
    )
    assert str(dummy) not in recorded and marker not in recorded
    for variable in info["OCIv1"]["config"].get("Env", []):
        assert not variable.startswith(("SSL_CERT_FILE=", "PIP_CERT=", "REQUESTS_CA_BUNDLE=")), variable


def test_run_returns_output_and_exit_code(tiny_build: TinyBuild, buildah_builder: BuildahBuilder) -> None:
    ok = buildah_builder.run(
        tiny_build.result.reference, ["python3", "-c", "print(open('/built.txt').read())"]
    )
    assert ok.returncode == 0
    assert ok.output.strip() == "built-by-thinkube"

    streamed: list[str] = []
    failed = buildah_builder.run(
        tiny_build.result.reference,
        ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"],
        streamed.append,
    )
    assert failed.returncode == 7
    # buildah relays the two streams through separate pipes: their relative order is not kept.
    assert sorted(failed.output.splitlines()) == ["to-stderr", "to-stdout"]
    assert {"to-stdout", "to-stderr"} <= set(streamed)
    assert _working_containers(buildah_builder) == []


def test_wrong_password_names_the_registry_and_hides_the_password(
    tiny_build: TinyBuild, buildah_builder: BuildahBuilder, registry: RegistryServer
) -> None:
    wrong = f"wrong-{secrets.token_urlsafe(12)}"
    request = BuildRequest(
        **{
            **{f: getattr(tiny_build.request, f) for f in tiny_build.request.__dataclass_fields__},
            "push_auth": RegistryAuth(registry.host, registry.username, wrong),
        }
    )
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
    tmp_path: Path, buildah_builder: BuildahBuilder, debian_base: str, registry: RegistryServer
) -> None:
    builder = buildah_builder.model_copy(update={"format": "docker"})
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo docker > /format.txt\n"
    )
    result = builder.build(_request(registry, tmp_path, debian_base, "tiny-docker", "src-0004"))
    served = _served(registry, "library/tiny-docker", "src-0004")
    assert served.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert served.headers["Docker-Content-Digest"] == result.digest
    assert result.base_digest == builder.inspect_image(debian_base)["FromImageDigest"]


@dg.asset
def built_by_any_builder(builder: ImageBuilder) -> str:
    return type(builder).__name__


def test_an_implementation_is_accepted_where_an_asset_asks_for_an_image_builder(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        ImageBuilder()  # the interface itself cannot be configured
    builder = BuildahBuilder(storage_root=str(tmp_path / "root"), run_root=str(tmp_path / "run"))
    outcome = dg.materialize([built_by_any_builder], resources={"builder": builder})
    assert outcome.success
    assert outcome.output_for_node("built_by_any_builder") == "BuildahBuilder"
    mirrored = builder.model_copy(update={"base_mirror": "localhost/mirror:1"})
    assert mirrored.with_base_mirror({"BASE_IMAGE": "docker.io/x:1", "K": "v"}) == {
        "BASE_IMAGE": "localhost/mirror:1",
        "K": "v",
    }
    assert builder.with_base_mirror({"BASE_IMAGE": "docker.io/x:1"}) == {"BASE_IMAGE": "docker.io/x:1"}
    defs = dg.Definitions(assets=[built_by_any_builder], resources={"builder": builder})
    assert defs.resolve_asset_graph() is not None


def test_debian_base_rootfs_is_cached_as_one_tar_file(debian_base: str) -> None:
    """A cache entry that is not a tar file would break the next machine that reads the cache."""
    cached = sorted(base_cache_dir().glob("debian-bookworm-*.tar"))
    assert cached, f"no cached rootfs under {base_cache_dir()}"
    assert all(path.is_file() and tarfile.is_tarfile(path) for path in cached), cached
