"""What the build and run Jobs share: placement on GPU nodes, resources, labels, names."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GPU_RESOURCE = "nvidia.com/gpu"
"""The extended resource the NVIDIA device plugin advertises."""
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
"""The node label the NVIDIA GPU operator sets on every GPU node (`nvidia.com/gpu` is set by nothing)."""

LABEL_PREFIX = "thinkube.io/"
IMAGE_LABEL = LABEL_PREFIX + "image"
BUILD_KEY_LABEL = LABEL_PREFIX + "build-key"
RUN_ID_LABEL = LABEL_PREFIX + "dagster-run-id"
CHECK_LABEL = LABEL_PREFIX + "check"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY = {"app.kubernetes.io/managed-by": "thinkube-pipelines"}

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Toleration(Spec):
    """One pod toleration (core/v1 Toleration)."""

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    def manifest(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


GPU_TOLERATION = Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
"""Tolerates the taint GPU nodes usually carry (`nvidia.com/gpu:NoSchedule`)."""


class Placement(Spec):
    """Where a Job's pod may run. Default: any GPU node (the cluster's compute), tolerating the GPU taint.

    Neither requests a GPU: a plain build or a CPU smoke check only lands on the GPU nodes' CPUs."""

    node_selector: dict[str, str] = Field(
        default_factory=lambda: {GPU_PRESENT_LABEL: "true"},
        description="Node labels the pod requires. Empty: any node the tolerations admit.",
    )
    tolerations: tuple[Toleration, ...] = Field(
        (GPU_TOLERATION,), description="Taints the pod tolerates (the GPU taint by default)."
    )


class Resources(Spec):
    """CPU, memory and ephemeral-storage requests and limits (Kubernetes quantities)."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    ephemeral_storage_request: str
    ephemeral_storage_limit: str

    def manifest(self, extra_limits: dict[str, str] | None = None) -> dict[str, Any]:
        limits = {
            "cpu": self.cpu_limit,
            "memory": self.memory_limit,
            "ephemeral-storage": self.ephemeral_storage_limit,
            **(extra_limits or {}),
        }
        requests = {
            "cpu": self.cpu_request,
            "memory": self.memory_request,
            "ephemeral-storage": self.ephemeral_storage_request,
        }
        return {"requests": requests, "limits": limits}


def label_value(text: str) -> str:
    """`text` as a valid label value (at most 63 characters of [-A-Za-z0-9_.], alphanumeric at both ends)."""
    value = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[:63].strip("-_.")
    if not _LABEL_VALUE.match(value):  # pragma: no cover - the substitutions above make it valid
        raise ValueError(f"cannot make a label value of {text!r}")
    return value


def job_name(prefix: str, *parts: str) -> str:
    """A Job name (a DNS label of at most 63 characters: the Job controller copies it into a pod label)
    made of `prefix`, the readable `parts` and a short hash of all of them, so that two different inputs
    never share a name even when truncated."""
    digest = hashlib.sha256("\0".join((prefix, *parts)).encode()).hexdigest()[:8]
    readable = "-".join(re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-") for part in (prefix, *parts))
    name = f"{readable[: 63 - 9].rstrip('-')}-{digest}"
    if not _DNS_LABEL.match(name):  # pragma: no cover
        raise ValueError(f"cannot make a Job name of {parts!r}")
    return name


def no_gpu_env() -> dict[str, str]:
    """Where the NVIDIA runtime is the node's default, a container that requested no GPU still sees every
    GPU when its image sets `NVIDIA_VISIBLE_DEVICES=all` (CUDA images do). `void` hides them."""
    return {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}
