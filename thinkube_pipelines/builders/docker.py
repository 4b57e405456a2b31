"""`DockerBuilder` and `DockerRunner`: the builder/runner seam on a Docker engine (Debian's `docker.io`).

Both drive the engine through Debian's `docker` client (20.10), so that builds go through the BuildKit
inside dockerd (`DOCKER_BUILDKIT=1`, no buildx needed) and runs use the same engine and the same
credentials handling:

- **build**: `docker build --progress=plain -f <Dockerfile in the archive> -` with the travelling context
  archive on stdin, then `docker push`; the pushed digest is read from the push's own output.
- **run**: `docker pull <host/repo@sha256:…>`, `docker create` (no network, the entrypoint replaced by
  `argv[0]`, so that exactly `argv` runs, as with buildah), `docker start --attach` within the time limit,
  the exit status read back from the engine, and the container removed in every case.

Credentials live only in a temporary `DOCKER_CONFIG` folder (`config.json`, mode 0600, in a 0700 folder)
that is removed afterwards: never on a command line, and masked in every line handed on. Because the
client always runs with that private folder, the operator's `~/.docker` (contexts, credential helpers) is
not consulted: the engine is `docker_host`, else `$DOCKER_HOST`, else the default socket.

The engine, not the client, talks to the registry, so two registry settings are the engine's business:

- **A private registry CA** (`RegistryAccess.ca_pem`): the engine trusts a registry's CA when it is at
  `<certs_dir>/<host[:port]>/ca.crt` (`/etc/docker/certs.d` for a rootful engine). With
  `registry_ca="install"` (the default) the CA is written there before the engine is asked to pull or push;
  that needs the engine on this machine (a `unix://` socket) and the right to write there, else the build
  or run fails saying so. With `registry_ca="preinstalled"` the operator has put it there on the engine's
  host (a remote engine) and nothing is written. The CA is never silently ignored.
- **Plain HTTP** (`RegistryAccess.tls_verify=False`): the engine speaks plain HTTP only to registries it
  counts as insecure (127.0.0.0/8 always, others via `insecure-registries` in its daemon.json). A push or
  pull that fails because of that says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field

from thinkube_pipelines.builders.base import (
    BuildError,
    BuildRequest,
    BuildResult,
    ImageBuilder,
    ImageRunner,
    LineSink,
    RegistryAccess,
    RunError,
    RunRequest,
    RunResult,
    log_tail,
    registry_host_of,
)
from thinkube_pipelines.builders.streamed import REDACTED, StreamedCommand, stream_command

DEBIAN_DOCKER_CLI = "/usr/bin/docker"
DEFAULT_DOCKER_CLI = DEBIAN_DOCKER_CLI if Path(DEBIAN_DOCKER_CLI).exists() else "docker"
"""Debian's client: another, newer `docker` on PATH may insist on buildx for BuildKit (absent here)."""
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
RUN_LABEL = "io.thinkube.pipelines.run"
"""Label on every container the runner creates (to find one left behind by a killed process)."""

_BUILDKIT_STEP = re.compile(r"^#(\d+) (\[.*)$")
"""`#5 [2/4] RUN …`: BuildKit's plain progress names a vertex once, by its number."""
_BUILDKIT_ERROR = re.compile(r"^#(\d+) ERROR\b")
_BUILDKIT_SUMMARY = re.compile(r"^ > (\[.*\].*):$")
"""` > [3/4] RUN …:` in the error summary at the end of a failed build."""
_PUSH_DIGEST = re.compile(r": digest: (sha256:[0-9a-f]{64}) size: \d+")
_HINTS = (
    (
        "server gave HTTP response to HTTPS client",
        "the engine does not count {host} as an insecure (plain HTTP) registry: add it to "
        "`insecure-registries` in the engine's daemon.json and restart the engine",
    ),
    (
        "x509:",
        "the engine does not trust {host}'s TLS certificate: give the registry's CA "
        "(RegistryAccess.ca_pem), or install it at {certs_dir}/{host}/ca.crt on the engine's host",
    ),
    (
        "buildx component is missing",
        "this `docker` client needs buildx for BuildKit: use Debian's client ({debian}), package docker.io",
    ),
    (
        "unauthorized:",
        "the registry {host} refused the credentials (a wrong username or password, or no right to "
        "push or pull that repository)",
    ),
    (
        "Cannot connect to the Docker daemon",
        "the Docker engine at {engine} does not answer: start dockerd, or set docker_host",
    ),
)


class DockerEngineMissing(RuntimeError):
    """The docker client binary is not installed."""


class DockerEngine(dg.ConfigurableResource):
    """Where the Docker engine is and how to reach it: what `DockerBuilder` and `DockerRunner` share."""

    docker: str = Field(
        default=DEFAULT_DOCKER_CLI,
        description="The docker client: a path or a name on PATH. Debian's /usr/bin/docker (package "
        "docker.io) when it exists: a newer client may refuse BuildKit builds without buildx.",
    )
    docker_host: str | None = Field(
        default=None,
        description="The engine's API address, e.g. `unix:///run/thinkube/docker.sock` or "
        "`tcp://builder:2376`. None: $DOCKER_HOST, else unix:///var/run/docker.sock.",
    )
    certs_dir: str = Field(
        default="/etc/docker/certs.d",
        description="Where the engine looks for registry CAs (`<certs_dir>/<host[:port]>/ca.crt`): "
        "/etc/docker/certs.d for a rootful engine, ~/.config/docker/certs.d for a rootless one.",
    )
    registry_ca: Literal["install", "preinstalled"] = Field(
        default="install",
        description="What to do with a request's registry CA: `install` writes it to "
        "`<certs_dir>/<host>/ca.crt` (the engine must be on this machine); `preinstalled`: the operator "
        "has put it there on the engine's host, nothing is written.",
    )
    command_timeout_s: float = Field(
        default=120.0, description="Limit for the short engine commands (create, inspect, remove)."
    )

    # -- the engine ------------------------------------------------------------------------------------

    def engine_address(self) -> str:
        """The engine's API address as the client will use it."""
        return self.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET

    def engine_is_local(self) -> bool:
        """Whether the engine is on this machine (a unix socket), so that its certs folder is ours."""
        return urlsplit(self.engine_address()).scheme == "unix"

    def client_binary(self) -> str:
        found = shutil.which(self.docker)
        if found is None:
            raise DockerEngineMissing(
                f"the docker client {self.docker!r} was not found: install the Debian package docker.io"
            )
        return found

    def client_argv(self, *args: str) -> list[str]:
        """A full client command line for this engine (the engine address as `--host`)."""
        return [self.client_binary(), "--host", self.engine_address(), *args]

    def prepare(self, access: RegistryAccess, host: str) -> None:
        """Check the client is there and make the engine trust the registry's CA; raises `RuntimeError`
        (or `DockerEngineMissing`) saying what to do."""
        self.client_binary()
        self.trust_registry_ca(access, host)

    @contextlib.contextmanager
    def client_env(self, access: RegistryAccess) -> Iterator[dict[str, str]]:
        """The client's environment: a private DOCKER_CONFIG holding `access`'s credentials (removed
        afterwards) and BuildKit on."""
        directory = Path(tempfile.mkdtemp(prefix="thinkube-docker-config-"))
        try:
            auths = {}
            if access.auth is not None:
                # Its base64 token is one of `access.secrets()`: masked wherever it appears.
                token = access.auth.basic_token
                auths[access.auth.host] = {"auth": token}
            fd = os.open(directory / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump({"auths": auths}, handle)
            env = {
                key: value
                for key, value in os.environ.items()
                if key not in ("DOCKER_CONTEXT", "DOCKER_HOST", "DOCKER_CONFIG")
            }
            # A TLS-protected remote engine: its client certificates stay where the operator keeps them
            # (the client would otherwise look for them in the private config folder).
            env["DOCKER_CERT_PATH"] = (
                os.environ.get("DOCKER_CERT_PATH")
                or os.environ.get("DOCKER_CONFIG")
                or str(Path.home() / ".docker")
            )
            env.update(DOCKER_CONFIG=str(directory), DOCKER_BUILDKIT="1", DOCKER_CLI_HINTS="false")
            yield env
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def trust_registry_ca(self, access: RegistryAccess, host: str) -> None:
        """Make the engine trust `access.ca_pem` for `host` (see `registry_ca`); raises `RuntimeError`
        saying what to do when it cannot."""
        if access.ca_pem is None or self.registry_ca == "preinstalled":
            return
        target = Path(self.certs_dir) / host / "ca.crt"
        if not self.engine_is_local():
            raise RuntimeError(
                f"the registry {host} has a private CA, and the Docker engine at {self.engine_address()} is "
                f"not on this machine: install the CA at {target} on the engine's host and set "
                "registry_ca='preinstalled'"
            )
        with contextlib.suppress(OSError):
            if target.read_text() == access.ca_pem:
                return
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, staged = tempfile.mkstemp(dir=target.parent, prefix=".ca-", suffix=".crt")
            with os.fdopen(fd, "w") as handle:
                handle.write(access.ca_pem)
            os.chmod(staged, 0o644)
            os.replace(staged, target)  # atomic: a concurrent pull reads the old CA or the new one
        except OSError as error:
            raise RuntimeError(
                f"the Docker engine trusts the registry {host}'s CA only at {target}, which cannot be "
                f"written ({error.strerror}): install it there as root, or set registry_ca='preinstalled'"
            ) from error

    def hint(self, lines: Sequence[str], host: str) -> str:
        """A sentence on what to do about a known failure seen in `lines` (empty when none is known)."""
        found = []
        for marker, text in _HINTS:
            if any(marker in line for line in lines):
                found.append(
                    text.format(
                        host=host,
                        certs_dir=self.certs_dir,
                        debian=DEBIAN_DOCKER_CLI,
                        engine=self.engine_address(),
                    )
                )
        return "; ".join(found)

    def quiet(self, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        """A short client command, its merged output captured."""
        return subprocess.run(
            self.client_argv(*args),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            timeout=self.command_timeout_s,
            check=False,
        )


class DockerBuilder(DockerEngine, ImageBuilder):
    """Builds with BuildKit inside a Docker engine and pushes with `docker push`.

    The image stays in the engine's storage after the push (the next build of a child image or an unchanged
    one reuses its layers).
    """

    build_network: str | None = Field(
        default="host",
        description="Network of RUN steps (`docker build --network`): `host` (works on an engine started "
        "with --bridge=none, and reaches a proxy on this machine), `none`, or None for the engine's "
        "default bridge.",
    )
    pull: bool = Field(
        default=False,
        description="Always ask the registry for a newer FROM image (`--pull`), e.g. for the nightly "
        "rebuild of a tag-referenced base; False uses the engine's copy when it has one.",
    )
    build_timeout_s: float = Field(default=3600.0, description="Kill a build that runs longer than this.")
    push_timeout_s: float = Field(default=1800.0, description="Kill a push that runs longer than this.")

    def build(self, request: BuildRequest, on_line: LineSink | None = None) -> BuildResult:
        """`docker build` of the context archive, then `docker push`; returns the digest pushed."""
        started = time.monotonic()
        host = request.registry_host
        try:
            request.context.verify()
            self.prepare(request.registry, host)
        except (ValueError, RuntimeError) as error:
            raise BuildError(request.image_name, None, str(error)) from error
        with self.client_env(request.registry) as env:
            redact = request.registry.secrets()
            built = stream_command(
                self.client_argv(*self._build_args(request)),
                on_line,
                self.build_timeout_s,
                redact=redact,
                env=env,
                stdin=request.context.archive,
            )
            if built.returncode != 0:
                reason = self._failure("build", built, self.build_timeout_s, host)
                raise BuildError(request.image_name, failed_step(built.lines), reason, log_tail(built.lines))
            pushed = stream_command(
                self.client_argv("push", request.target),
                on_line,
                self.push_timeout_s,
                redact=redact,
                env=env,
            )
        lines = built.lines + pushed.lines
        step = f"push to registry {host}"
        if pushed.returncode != 0:
            reason = self._failure("push", pushed, self.push_timeout_s, host)
            raise BuildError(request.image_name, step, reason, log_tail(lines))
        digests = [match.group(1) for line in pushed.lines if (match := _PUSH_DIGEST.search(line))]
        if not digests:
            raise BuildError(
                request.image_name, step, "docker push printed no manifest digest", log_tail(lines)
            )
        return BuildResult(
            reference=request.target,
            digest=digests[-1],
            duration_s=time.monotonic() - started,
            log_tail=log_tail(lines),
        )

    def _failure(self, command: str, ran: StreamedCommand, timeout_s: float, host: str) -> str:
        """Why `docker <command>` failed, with the hint its output matches, if any."""
        reason = (
            f"{command} timed out after {timeout_s:.0f} s"
            if ran.timed_out
            else f"{command} failed (docker {command} exit {ran.returncode})"
        )
        hint = self.hint(ran.lines, host)
        return f"{reason}; {hint}" if hint else reason

    def _build_args(self, request: BuildRequest) -> list[str]:
        args = [
            "build",
            "--progress=plain",
            "--platform",
            request.platform,
            "-f",
            request.context.dockerfile,
            "-t",
            request.target,
        ]
        if self.build_network:
            args += ["--network", self.build_network]
        if self.pull:
            args.append("--pull")
        for key, value in request.build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        # BuildKit writes --label values into the image config: no layer, no extra step.
        for key, value in request.labels.items():
            args += ["--label", f"{key}={value}"]
        args.append("-")  # the context: a tar archive on stdin
        return args


class DockerRunner(DockerEngine, ImageRunner):
    """Runs a command in a throwaway container of an image pulled by digest into a Docker engine.

    GPUs are asked for with `--gpus N`: the engine needs the NVIDIA Container Toolkit for that; an engine
    without it makes the run a `RunError` at once.
    """

    network: str = Field(
        default="none",
        description="The container's network (`docker create --network`): `none` (a check needs none), "
        "`host`, or a network the engine has.",
    )
    pull_timeout_s: float = Field(default=1800.0, description="Kill a pull that runs longer than this.")

    def run(self, request: RunRequest, on_line: LineSink | None = None) -> RunResult:
        """Pull `request.image`, run `request.argv` in a new container, remove the container."""
        host = registry_host_of(request.image)
        try:
            self.prepare(request.registry, host)
        except RuntimeError as error:
            raise RunError(f"run in {request.image}: {error}") from error
        with self.client_env(request.registry) as env:
            return self._pull_and_run(request, on_line, env, host)

    def _pull_and_run(
        self, request: RunRequest, on_line: LineSink | None, env: dict[str, str], host: str
    ) -> RunResult:
        redact = request.registry.secrets()
        pulled = stream_command(
            self.client_argv("pull", request.image), on_line, self.pull_timeout_s, redact=redact, env=env
        )
        if pulled.returncode != 0:
            reason = "timed out" if pulled.timed_out else f"docker pull exit {pulled.returncode}"
            hint = self.hint(pulled.lines, host)
            raise RunError(
                f"could not pull {request.image} from registry {host} ({reason})"
                + (f": {hint}" if hint else "")
                + "\n"
                + "\n".join(f"  | {line}" for line in log_tail(pulled.lines))
            )
        name = f"thinkube-run-{secrets.token_hex(6)}"
        create = ["create", "--name", name, "--label", f"{RUN_LABEL}=1", "--pull", "never"]
        create += ["--network", self.network, "--entrypoint", request.argv[0]]
        if request.gpus:
            create += ["--gpus", str(request.gpus)]
        created = self.quiet(env, *create, request.image, *request.argv[1:])
        if created.returncode != 0:
            raise RunError(f"could not create a container of {request.image}: {mask(created.stdout, redact)}")
        try:
            ran = stream_command(
                self.client_argv("start", "--attach", name),
                on_line,
                request.timeout_s,
                redact=redact,
                env=env,
            )
            if ran.timed_out:
                return RunResult(returncode=124, output=joined(ran.lines))
            state = self._state(env, name)
            if not state.get("StartedAt") or state.get("StartedAt", "").startswith("0001-"):
                raise RunError(
                    self._not_started(request, state.get("Error") or mask(joined(ran.lines), redact))
                )
            if state.get("Running"):
                raise RunError(f"run in {request.image}: the client detached while the container still ran")
            return RunResult(returncode=int(state.get("ExitCode", ran.returncode)), output=joined(ran.lines))
        finally:
            # Removing it also kills it (a command past its time limit).
            self.quiet(env, "rm", "--force", "--volumes", name)

    def _state(self, env: dict[str, str], name: str) -> dict:
        inspected = self.quiet(env, "inspect", "--type", "container", "--format", "{{json .State}}", name)
        if inspected.returncode != 0:
            raise RunError(f"could not read the state of container {name}: {inspected.stdout.strip()}")
        return json.loads(inspected.stdout)

    def _not_started(self, request: RunRequest, error: str) -> str:
        message = (
            f"run in {request.image}: the engine at {self.engine_address()} could not start the container"
        )
        if request.gpus and ("device driver" in error or "nvidia" in error.lower()):
            return (
                f"{message} with {request.gpus} GPU(s): the engine has no GPU runtime (install the NVIDIA "
                f"Container Toolkit on its host and restart it): {error.strip()}"
            )
        return f"{message}: {error.strip()}"


def failed_step(lines: Sequence[str]) -> str | None:
    """The BuildKit step that failed (`[3/5] RUN …`), from a `--progress=plain` log."""
    names: dict[str, str] = {}
    failed: str | None = None
    for line in lines:
        if match := _BUILDKIT_STEP.match(line):
            names.setdefault(match.group(1), match.group(2))
        elif (match := _BUILDKIT_ERROR.match(line)) and match.group(1) in names:
            failed = names[match.group(1)]
    if failed is None:
        summaries = [match.group(1) for line in lines if (match := _BUILDKIT_SUMMARY.match(line))]
        failed = summaries[-1] if summaries else None
    return failed


def joined(lines: Sequence[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def mask(text: str, secrets_: Sequence[str]) -> str:
    for secret in secrets_:
        if secret:
            text = text.replace(secret, REDACTED)
    return text
