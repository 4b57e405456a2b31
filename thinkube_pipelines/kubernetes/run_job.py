"""The batch/v1 Job that runs a command in a pushed image (the smoke check, the GPU test): a pure function.

The image is named by digest only, so what runs is exactly what was built. The container has no
privileges (non-root, no privilege escalation, every capability dropped, the runtime's default seccomp
profile) and no API token. It asks for `nvidia.com/gpu` exactly when the check needs GPUs, and then always
selects GPU nodes and tolerates the GPU taint, whatever the configured placement. A check is its exit code:
the Job is never retried for a failing command (`backoffLimit: 0`), only for a disruption (eviction,
preemption, a drained node), which the pod failure policy ignores.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, field_validator

from thinkube_pipelines.builders.base import DEFAULT_RUN_TIMEOUT_S
from thinkube_pipelines.kubernetes.common import (
    CHECK_LABEL,
    COMPONENT_LABEL,
    GPU_PRESENT_LABEL,
    GPU_RESOURCE,
    GPU_TOLERATION,
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

RUN_CONTAINER = "check"


def default_run_resources() -> Resources:
    """A smoke check imports the image's packages; the GPU test multiplies matrices on CPU and GPU."""
    return Resources(
        cpu_request="1",
        cpu_limit="4",
        memory_request="2Gi",
        memory_limit="16Gi",
        ephemeral_storage_request="1Gi",
        ephemeral_storage_limit="10Gi",
    )


class RunJobSpec(Spec):
    """One command in one image by digest."""

    namespace: str
    image_name: str = Field(description="The image's name in images/ (a label).")
    check: str = Field(description="What runs: `smoke` or `gpu` (a label and part of the Job name).")
    run_id: str = Field(description="The Dagster run id (a label: a cancelled run deletes its Jobs by it).")
    image: str = Field(description="`host/repository@sha256:…`, never a tag.")
    argv: tuple[str, ...] = Field(description="The command; replaces the image's entrypoint.")
    gpus: int = Field(0, ge=0, description="GPUs the command needs (`nvidia.com/gpu` limit); 0: none.")
    timeout_s: float = Field(DEFAULT_RUN_TIMEOUT_S, gt=0, description="The command's own time limit.")
    pull_allowance_s: int = Field(
        900,
        ge=0,
        description="Added to timeout_s for the Job's deadline, which also counts scheduling and pulling a "
        "CUDA image of several GB.",
    )
    ttl_after_finished_s: int = Field(7 * 24 * 3600, ge=0, description="How long a finished Job is kept.")
    placement: Placement = Field(default_factory=Placement)
    resources: Resources = Field(default_factory=default_run_resources)
    image_pull_secret: str | None = Field(
        None, description="Secret (kubernetes.io/dockerconfigjson) to pull the image, unless nodes can."
    )
    run_as_non_root: bool = Field(True, description="Refuse an image whose user is root.")

    @field_validator("image")
    @classmethod
    def _by_digest(cls, value: str) -> str:
        if "@sha256:" not in value:
            raise ValueError(f"{value!r} is not a digest reference (host/repository@sha256:…)")
        return value

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("argv is empty")
        return value

    @property
    def job_name(self) -> str:
        digest = self.image.rpartition("@sha256:")[2]
        return job_name(self.check, self.image_name, digest[:12], self.run_id[:8])

    @property
    def active_deadline_s(self) -> int:
        return math.ceil(self.timeout_s) + self.pull_allowance_s


def run_labels(spec: RunJobSpec) -> dict[str, str]:
    return {
        **MANAGED_BY,
        COMPONENT_LABEL: "image-check",
        IMAGE_LABEL: label_value(spec.image_name),
        CHECK_LABEL: label_value(spec.check),
        RUN_ID_LABEL: label_value(spec.run_id),
    }


def _placement(spec: RunJobSpec) -> tuple[dict[str, str], list[dict[str, Any]]]:
    selector = dict(spec.placement.node_selector)
    tolerations = list(spec.placement.tolerations)
    if spec.gpus:
        selector.setdefault(GPU_PRESENT_LABEL, "true")
        if not any(t.key == GPU_RESOURCE for t in tolerations):
            tolerations.append(GPU_TOLERATION)
    return selector, [t.manifest() for t in tolerations]


def run_job_manifest(spec: RunJobSpec) -> dict[str, Any]:
    """The batch/v1 Job for `spec`."""
    labels = run_labels(spec)
    extra_limits = {GPU_RESOURCE: str(spec.gpus)} if spec.gpus else None
    node_selector, tolerations = _placement(spec)
    container: dict[str, Any] = {
        "name": RUN_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(spec.argv),
        "resources": spec.resources.manifest(extra_limits),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": spec.run_as_non_root,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if not spec.gpus:
        container["env"] = [no_gpu_env()]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "nodeSelector": node_selector,
        "tolerations": tolerations,
        "containers": [container],
    }
    if spec.image_pull_secret:
        pod_spec["imagePullSecrets"] = [{"name": spec.image_pull_secret}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": spec.job_name,
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": {"thinkube.io/image-ref": spec.image},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": spec.active_deadline_s,
            "ttlSecondsAfterFinished": spec.ttl_after_finished_s,
            "podFailurePolicy": {
                "rules": [
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
