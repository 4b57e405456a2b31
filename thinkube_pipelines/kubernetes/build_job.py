"""The batch/v1 Job that builds one image with BuildKit rootless and pushes it: a pure function of a spec.

The pod follows BuildKit's own rootless Job example (moby/buildkit `examples/kubernetes/job.rootless.yaml`):
`buildctl-daemonless.sh build` in `moby/buildkit:<version>-rootless`, seccomp and AppArmor Unconfined, user
and group 1000, an emptyDir for `~/.local/share/buildkit`, `BUILDKITD_FLAGS=--oci-worker-no-process-sandbox`.

**The build context** travels through the registry, since the run's pod and the build's pod share no
filesystem and a ConfigMap stops at 1 MiB (etcd's object limit): the builder pushes the context archive
(`BuildContext`, a reproducible tar) as a blob (`RegistryClient.push_blob`), and the init container
`context` fetches that blob *by digest* with `oras blob fetch`, checks its sha256 with `sha256sum -c`, and
unpacks it into an emptyDir that buildctl reads as `--local context=` and `--local dockerfile=`. Contexts are
limited to `MAX_CONTEXT_BYTES`: the pipeline holds the archive in memory and uploads it in one request, and
the pod holds it twice (the tar and its files) in its ephemeral storage.

**The result**: buildctl pushes by name with the build tag (`--output type=image,name=<target>,push=true`)
and writes its metadata (`containerimage.digest`) with `--metadata-file` to the container's termination
message file, so the digest comes back in the pod's status
(`status.containerStatuses[name=buildkit].state.terminated.message`) without parsing logs; on failure
(`FallbackToLogsOnError`) that message is the log's tail. The registry layer cache is imported and exported
with `type=registry,mode=max`.

**Credentials** come from a Secret of type `kubernetes.io/dockerconfigjson` (Harbor robot account) mounted
as `$DOCKER_CONFIG/config.json`; no credential is ever written into the manifest. A private CA comes from a
ConfigMap, added to Go's certificate directories (`SSL_CERT_DIR`) of buildkitd and oras, beside the
system roots (so public base images still verify).

**Retries**: a `podFailurePolicy` fails the Job at once when the build itself fails (BuildKit's non-zero
exit: a Dockerfile error or an OOM kill will not go away by retrying) and does not count a disruption
(eviction, preemption, node drain: `DisruptionTarget`) against `backoffLimit`; any other pod failure (the
context fetch, a lost node) is retried up to `backoff_limit` times.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from thinkube_pipelines.builders.base import DEFAULT_PLATFORM, registry_host_of
from thinkube_pipelines.kubernetes.common import (
    BUILD_KEY_LABEL,
    COMPONENT_LABEL,
    IMAGE_LABEL,
    MANAGED_BY,
    RUN_ID_LABEL,
    Placement,
    Resources,
    Spec,
    job_name,
    label_value,
    no_gpu_env,
)

BUILDKIT_VERSION = "v0.32.2"
BUILDKIT_IMAGE = (
    f"docker.io/moby/buildkit:{BUILDKIT_VERSION}-rootless"
    "@sha256:504731e577c20559c00f968f33219f30115e70be29ab96728d1d06e963fc494b"
)
"""BuildKit's latest release (github.com/moby/buildkit tag v0.32.2, 2026-08-04), rootless variant, pinned by
the digest of its multi-platform index."""

ORAS_VERSION = "v1.3.3"
CONTEXT_FETCH_IMAGE = (
    f"ghcr.io/oras-project/oras:{ORAS_VERSION}"
    "@sha256:a4c54befd87d0366e0ba3ac3a9536a5288c8a3735acd3b635cdace59a2c559c8"
)
"""ORAS (CNCF), latest release v1.3.3: `oras blob fetch` speaks the registry's token auth from a Docker
config file and checks the digest it fetched; its image is Alpine, so it also has `sh`, `sha256sum` and
`tar`. The BuildKit image has busybox `wget` but no way through a registry's bearer-token challenge."""

MAX_CONTEXT_BYTES = 1024**3
"""The largest build context archive (1 GiB). Image folders are a few KiB; the limit keeps the in-memory
archive, its single-request upload and the pod's two copies of it bounded."""

BUILDKIT_CONTAINER = "buildkit"
CONTEXT_CONTAINER = "context"
WORKSPACE = "/workspace"
CONTEXT_DIR = f"{WORKSPACE}/context"
DOCKER_CONFIG_DIR = "/home/user/.docker"
CA_DIR = "/etc/thinkube/registry-ca"
SYSTEM_CERT_DIR = "/etc/ssl/certs"
TERMINATION_MESSAGE = "/dev/termination-log"
ATTEMPT_ANNOTATION = "thinkube.io/attempt"
SECRET_KEY = ".dockerconfigjson"

FETCH_SCRIPT = r"""set -eu
oras blob fetch --registry-config "$DOCKER_CONFIG/config.json" $ORAS_FLAGS \
  --output /workspace/context.tar "$CONTEXT_BLOB"
echo "${CONTEXT_DIGEST#sha256:}  /workspace/context.tar" | sha256sum -c -
mkdir -p /workspace/context
tar -x -f /workspace/context.tar -C /workspace/context
rm /workspace/context.tar
"""
"""The init container's script. Every value comes from the environment, never from string formatting."""

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_BUILD_ARG = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def default_build_resources() -> Resources:
    """A CUDA image build: base layers of several GB are pulled, unpacked, snapshotted and exported, so its
    scratch (BuildKit's state emptyDir) needs tens of GB; pip and compilers need a few cores and GBs."""
    return Resources(
        cpu_request="2",
        cpu_limit="8",
        memory_request="8Gi",
        memory_limit="32Gi",
        ephemeral_storage_request="50Gi",
        ephemeral_storage_limit="100Gi",
    )


class BuildJobSpec(Spec):
    """Everything one build Job needs; nothing secret (the credentials are a Secret's name)."""

    namespace: str = Field(description="Namespace of the Job (the code location's own).")
    image_name: str = Field(description="The image's name in images/ (a label; cancelled runs find it).")
    build_key: str = Field(description="The build key (a label: one key, one Job).")
    attempt: int = Field(
        1,
        ge=1,
        description="Which Job of this build key this is: a build tried again after a failed Job gets a "
        "new Job (attempt 2, 3, ...) under a new name, so the failed one is kept with its logs.",
    )
    run_id: str = Field(description="The Dagster run id (a label: a cancelled run deletes its Jobs by it).")
    target: str = Field(description="Reference pushed: `host/repository:build-<key>`.")
    context_blob: str = Field(
        description="The context archive in the registry: `host/repository@sha256:…` (pushed as a blob)."
    )
    context_size: int = Field(ge=0, le=MAX_CONTEXT_BYTES, description="Bytes of the context archive.")
    dockerfile: str = Field("Dockerfile", description="The Dockerfile's path inside the context.")
    build_args: dict[str, str] = Field(default_factory=dict)
    image_labels: dict[str, str] = Field(default_factory=dict, description="Image config labels.")
    platform: str = DEFAULT_PLATFORM
    cache_ref: str | None = Field(
        None, description="Registry cache reference (`host/repository:buildcache`); None: no cache."
    )
    registry_secret: str = Field(
        description="Secret (type kubernetes.io/dockerconfigjson) with push access to the target, pull "
        "access to the context, the cache and any parent image."
    )
    ca_configmap: str | None = Field(None, description="ConfigMap holding the registry's CA, if private.")
    ca_key: str = Field("ca.crt", description="The key of the CA certificate (PEM) in that ConfigMap.")
    plain_http: bool = Field(
        False, description="The registry speaks plain HTTP (a test registry; never Harbor in production)."
    )
    placement: Placement = Field(default_factory=Placement)
    resources: Resources = Field(default_factory=default_build_resources)
    backoff_limit: int = Field(
        2, ge=0, description="Retries of a pod that failed for another reason than the build itself."
    )
    active_deadline_s: int = Field(
        3 * 3600, gt=0, description="The whole Job's time limit: a cold CUDA build takes 20 to 60 minutes."
    )
    ttl_after_finished_s: int = Field(
        7 * 24 * 3600,
        ge=0,
        description="How long a finished Job (and its pods, hence its logs) is kept: a week, so a failed "
        "build's logs can be read after the weekend. The builder deletes a succeeded Job itself.",
    )
    service_account: str | None = Field(
        None, description="ServiceAccount of the pod (no API token is mounted either way)."
    )
    buildkit_image: str = BUILDKIT_IMAGE
    context_fetch_image: str = CONTEXT_FETCH_IMAGE

    @field_validator("context_blob")
    @classmethod
    def _by_digest(cls, value: str) -> str:
        name, _, digest = value.partition("@")
        if not _DIGEST.match(digest):
            raise ValueError(f"{value!r} does not name the context by digest (host/repository@sha256:…)")
        registry_host_of(name)
        return value

    @field_validator("target")
    @classmethod
    def _tagged(cls, value: str) -> str:
        registry_host_of(value)
        if "@" in value or ":" not in value.rpartition("/")[2]:
            raise ValueError(f"{value!r} is not `host/repository:tag` (buildctl pushes by name with a tag)")
        return value

    @field_validator("build_args", "image_labels")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or "=" in key or any(c.isspace() for c in key):
                raise ValueError(f"{key!r} is not a valid build argument or label name")
        return value

    @property
    def context_digest(self) -> str:
        return self.context_blob.partition("@")[2]

    @property
    def job_name(self) -> str:
        if self.attempt == 1:
            return job_name("build", self.image_name, self.build_key[:12])
        return job_name("build", self.image_name, self.build_key[:12], f"a{self.attempt}")


def build_labels(spec: BuildJobSpec) -> dict[str, str]:
    """The labels of the Job and its pods: a cancelled run deletes its Jobs with
    `thinkube.io/dagster-run-id=<run id>`; `thinkube.io/build-key` finds the Job of a build."""
    return {
        **MANAGED_BY,
        "app.kubernetes.io/name": "buildkit",
        COMPONENT_LABEL: "image-build",
        IMAGE_LABEL: label_value(spec.image_name),
        BUILD_KEY_LABEL: label_value(spec.build_key),
        RUN_ID_LABEL: label_value(spec.run_id),
    }


def buildctl_args(spec: BuildJobSpec) -> list[str]:
    """The arguments of `buildctl-daemonless.sh`."""
    dockerfile_dir, _, filename = f"{CONTEXT_DIR}/{spec.dockerfile}".rpartition("/")
    args = [
        "build",
        "--frontend",
        "dockerfile.v0",
        "--local",
        f"context={CONTEXT_DIR}",
        "--local",
        f"dockerfile={dockerfile_dir}",
        "--opt",
        f"filename={filename}",
        "--opt",
        f"platform={spec.platform}",
    ]
    for key, value in sorted(spec.build_args.items()):
        args += ["--opt", f"build-arg:{key}={value}"]
    for key, value in sorted(spec.image_labels.items()):
        args += ["--opt", f"label:{key}={value}"]
    insecure = ",registry.insecure=true" if spec.plain_http else ""
    args += ["--output", f"type=image,name={spec.target},push=true{insecure}"]
    if spec.cache_ref:
        args += ["--import-cache", f"type=registry,ref={spec.cache_ref}{insecure}"]
        args += ["--export-cache", f"type=registry,ref={spec.cache_ref},mode=max{insecure}"]
    args += ["--metadata-file", TERMINATION_MESSAGE]
    return args


def _ca_env(spec: BuildJobSpec) -> list[dict[str, str]]:
    if not spec.ca_configmap:
        return []
    return [{"name": "SSL_CERT_DIR", "value": f"{SYSTEM_CERT_DIR}:{CA_DIR}"}]


def _ca_mount(spec: BuildJobSpec) -> list[dict[str, Any]]:
    if not spec.ca_configmap:
        return []
    return [{"name": "registry-ca", "mountPath": CA_DIR, "readOnly": True}]


def build_job_manifest(spec: BuildJobSpec) -> dict[str, Any]:
    """The batch/v1 Job for `spec`."""
    labels = build_labels(spec)
    docker_config_mount = {"name": "docker-config", "mountPath": DOCKER_CONFIG_DIR, "readOnly": True}
    context = {
        "name": CONTEXT_CONTAINER,
        "image": spec.context_fetch_image,
        "command": ["sh", "-c", FETCH_SCRIPT],
        "env": [
            {"name": "CONTEXT_BLOB", "value": spec.context_blob},
            {"name": "CONTEXT_DIGEST", "value": spec.context_digest},
            {"name": "ORAS_FLAGS", "value": "--plain-http" if spec.plain_http else ""},
            {"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_DIR},
            {"name": "HOME", "value": "/tmp"},
            *_ca_env(spec),
        ],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "64Mi"},
            "limits": {"cpu": "1", "memory": "512Mi", "ephemeral-storage": "256Mi"},
        },
        "securityContext": {
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "workspace", "mountPath": WORKSPACE},
            docker_config_mount,
            *_ca_mount(spec),
        ],
    }
    buildkit = {
        "name": BUILDKIT_CONTAINER,
        "image": spec.buildkit_image,
        "command": ["buildctl-daemonless.sh"],
        "args": buildctl_args(spec),
        "env": [
            {"name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox"},
            {"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_DIR},
            no_gpu_env(),
            *_ca_env(spec),
        ],
        "resources": spec.resources.manifest(),
        "terminationMessagePath": TERMINATION_MESSAGE,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # As BuildKit's rootless example: rootlesskit needs the setuid newuidmap (so no
        # allowPrivilegeEscalation: false) and unconfined seccomp/AppArmor to create its user namespace.
        "securityContext": {
            "seccompProfile": {"type": "Unconfined"},
            "appArmorProfile": {"type": "Unconfined"},
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "runAsNonRoot": True,
        },
        "volumeMounts": [
            {"name": "workspace", "mountPath": WORKSPACE, "readOnly": True},
            # Not the image's VOLUME: on Container-Optimized OS it is mounted nosuid,nodev (buildkit#879).
            {"name": "buildkitd", "mountPath": "/home/user/.local/share/buildkit"},
            docker_config_mount,
            *_ca_mount(spec),
        ],
    }
    volumes: list[dict[str, Any]] = [
        # The context archive and its files: at most twice MAX_CONTEXT_BYTES.
        {"name": "workspace", "emptyDir": {"sizeLimit": _quantity(2 * spec.context_size + 64 * 1024**2)}},
        {"name": "buildkitd", "emptyDir": {}},
        {
            "name": "docker-config",
            "secret": {
                "secretName": spec.registry_secret,
                "items": [{"key": SECRET_KEY, "path": "config.json"}],
                "defaultMode": 0o440,
            },
        },
    ]
    if spec.ca_configmap:
        volumes.append(
            {
                "name": "registry-ca",
                "configMap": {"name": spec.ca_configmap, "items": [{"key": spec.ca_key, "path": "ca.crt"}]},
            }
        )
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"fsGroup": 1000},
        "nodeSelector": dict(spec.placement.node_selector),
        "tolerations": [t.manifest() for t in spec.placement.tolerations],
        "initContainers": [context],
        "containers": [buildkit],
        "volumes": volumes,
    }
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": spec.job_name,
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": {
                "thinkube.io/target": spec.target,
                "thinkube.io/context": spec.context_blob,
                "thinkube.io/build-key": spec.build_key,
                ATTEMPT_ANNOTATION: str(spec.attempt),
            },
        },
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_s,
            "ttlSecondsAfterFinished": spec.ttl_after_finished_s,
            "podFailurePolicy": {
                "rules": [
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": BUILDKIT_CONTAINER,
                            "operator": "NotIn",
                            "values": [0],
                        },
                    },
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def _quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity in whole MiB, rounded up."""
    return f"{-(-size // 1024**2)}Mi"
