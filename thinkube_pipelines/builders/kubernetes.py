"""`KubernetesBuilder` and `KubernetesRunner`: every build a BuildKit Job, every check a Job, in the cluster.

**A build** (`KubernetesBuilder.build`):

1. The context archive (`BuildContext`, at most `build_job.MAX_CONTEXT_BYTES`) is pushed to the image's own
   repository as a blob, and kept from the registry's garbage collector by a small OCI artifact manifest
   tagged `context-<sha256 of the archive>` that references it (a blob no manifest references is what
   `registry garbage-collect` and Harbor's GC delete, possibly while the build still needs it). The same
   context is the same tag: pushing it again writes nothing. These tags are KiBs each; a retention rule
   may drop `context-*` tags older than the longest build.
2. The build Job of `build_job.build_job_manifest` is created in the Jobs' namespace, labelled with the
   image, the build key and the Dagster run id. A Job of the same build key that is still running, or that
   succeeded, is followed instead of starting a second build (one key, one Job); after a failed Job the
   next attempt gets a Job of its own (`attempt` 2, 3, ...), so the failed one stays with its logs.
3. The Job and its pods are watched (list, then watch from that resourceVersion; a 410 relists), and the
   logs of the init container `context` and of `buildkit` are followed (pods/log, follow) as each starts:
   every line goes to the caller's `on_line` as it comes, and the builder's own observations (pod created,
   scheduled on node X, unschedulable and why, evicted, failed) go there too, prefixed `[kubernetes]`.
4. Success (condition SuccessCriteriaMet or Complete): the digest is read from the `buildkit` container's
   termination message (buildctl's `--metadata-file`: `containerimage.digest`), checked against what the
   registry serves for the build tag (`digest_of`), and the succeeded Job is deleted (its pods with it).
5. Failure: the Job is kept (until its `ttlSecondsAfterFinished`, a week) so that its logs can be read,
   and `BuildError` names the Job, the pod, the node and the reason: `OOMKilled` (with the memory limit),
   an exit code and its termination message, `Evicted`, `DeadlineExceeded`, `BackoffLimitExceeded`,
   `PodFailurePolicy`. A pod that never starts is given up on: still unscheduled after
   `schedule_timeout_s` (the error quotes the scheduler's FailedScheduling message), or scheduled but
   without a started container after `start_timeout_s` (`ImagePullBackOff` and its message, a `FailedMount`
   event, ...); at once for `InvalidImageName`, `CreateContainerConfigError` and `ErrImageNeverPull`. Such a
   Job is deleted, since it would otherwise build later with nobody waiting; its reason is in the error.

**Retries** are Kubernetes' own, by the Job's `podFailurePolicy` and `backoffLimit` (build_job.py):

- the build itself fails (`buildkit` exits non-zero: a Dockerfile error, a failed push, an OOM kill): the Job
  fails at once (`PodFailurePolicy`); retrying would fail the same way;
- a disruption (eviction, preemption, a drained or lost node: pod condition `DisruptionTarget`) is not
  counted: the Job controller creates a new pod, as often as it takes, within `activeDeadlineSeconds`;
- any other pod failure (the context fetch, a node that vanished without a DisruptionTarget) is retried up
  to `backoff_limit` times (default 2), then `BackoffLimitExceeded`.

The builder itself does not retry a failed Job; a Dagster retry of the step starts the next attempt.

**Cancellation**: when the step is interrupted (Dagster's run termination raises
`DagsterExecutionInterruptedError`, a KeyboardInterrupt: anything that is not an `Exception`), the Jobs of
this run and this build key (labels `thinkube.io/dagster-run-id`, `thinkube.io/build-key`) are deleted,
pods included, before the interruption goes on. A Job this run only followed (another run's) is left alone.

**A check** (`KubernetesRunner.run`): the Job of `run_job.run_job_manifest` runs the command in the digest;
the smoke check asks for no GPU, the GPU test for exactly `nvidia.com/gpu: 1` and tolerates the GPU taint.
Its exit code is the `RunResult`'s, its log the output; past `timeout_s` of running the Job is deleted and
the result is 124. A check that cannot run (unschedulable, image pull failure) is a `RunError` naming the
Job, pod, node and reason. A check Job that exited 0 is deleted; one that failed is kept.

The Jobs need the RBAC of deploy/rbac.yaml: jobs create/get/list/watch/delete, pods list/watch,
pods/log get, events list. Credentials never enter a manifest: the registry's Docker config is the Secret
`registry_secret` (type kubernetes.io/dockerconfigjson), its CA the ConfigMap `ca_configmap`.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, PrivateAttr

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
)
from thinkube_pipelines.kubernetes.build_job import (
    ATTEMPT_ANNOTATION,
    BUILDKIT_CONTAINER,
    BUILDKIT_IMAGE,
    CONTEXT_CONTAINER,
    CONTEXT_FETCH_IMAGE,
    MAX_CONTEXT_BYTES,
    BuildJobSpec,
    build_job_manifest,
    build_labels,
    default_build_resources,
)
from thinkube_pipelines.kubernetes.cluster import KubernetesCluster, KubernetesError, _call
from thinkube_pipelines.kubernetes.common import (
    BUILD_KEY_LABEL,
    CHECK_LABEL,
    GPU_PRESENT_LABEL,
    GPU_TOLERATION,
    IMAGE_LABEL,
    RUN_ID_LABEL,
    Placement,
    Resources,
    Toleration,
)
from thinkube_pipelines.kubernetes.run_job import (
    RUN_CONTAINER,
    RunJobSpec,
    default_run_resources,
    run_job_manifest,
    run_labels,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from thinkube_pipelines.registry.client import RegistryClient

# -- settings (environment variables read by defs/resources.py) ---------------------------------------------

JOBS_NAMESPACE_ENV = "THINKUBE_JOBS_NAMESPACE"
BUILD_REGISTRY_SECRET_ENV = "THINKUBE_BUILD_REGISTRY_SECRET"
REGISTRY_CA_CONFIGMAP_ENV = "THINKUBE_REGISTRY_CA_CONFIGMAP"
JOB_NODE_SELECTOR_ENV = "THINKUBE_JOB_NODE_SELECTOR"
JOB_TOLERATIONS_ENV = "THINKUBE_JOB_TOLERATIONS"
BUILD_RESOURCES_ENV = "THINKUBE_BUILD_RESOURCES"
CHECK_RESOURCES_ENV = "THINKUBE_CHECK_RESOURCES"
BUILD_CACHE_ENV = "THINKUBE_BUILD_CACHE"
SCHEDULE_TIMEOUT_ENV = "THINKUBE_JOB_SCHEDULE_TIMEOUT_S"
START_TIMEOUT_ENV = "THINKUBE_JOB_START_TIMEOUT_S"
BUILDKIT_IMAGE_ENV = "THINKUBE_BUILDKIT_IMAGE"
CONTEXT_FETCH_IMAGE_ENV = "THINKUBE_CONTEXT_FETCH_IMAGE"

DEFAULT_REGISTRY_SECRET = "thinkube-registry-docker-config"
DEFAULT_CA_CONFIGMAP = "thinkube-registry-ca"
DEFAULT_NODE_SELECTOR = f"{GPU_PRESENT_LABEL}=true"
DEFAULT_TOLERATIONS = f"{GPU_TOLERATION.key}:{GPU_TOLERATION.effect}"
DEFAULT_SCHEDULE_TIMEOUT_S = 1800
DEFAULT_START_TIMEOUT_S = 600

LOG_PREFIX = "[kubernetes] "
LOG_END_GRACE_S = 2.0
"""How long a log follower waits for its container's exit to show after the log stream ended."""
"""Lines the builder and runner add to a Job's log: what the cluster did with the Job."""
CONTEXT_TAG_PREFIX = "context-"
CONTEXT_ARTIFACT_TYPE = "application/vnd.thinkube.build-context.v1+tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_TAR_LAYER = "application/vnd.oci.image.layer.v1.tar"
BUILD_KEY_IMAGE_LABEL = "org.thinkube.build-key"

WATCH_S = 60
"""Server-side length of one watch request; the watch is then resumed from its last resourceVersion."""
TICK_S = 0.2
"""How often the follow loop looks at its clocks when nothing happens."""
FAILED_GRACE_S = 15.0
"""After FailureTarget, how long to wait for the Job's Failed condition (its pods to be terminated)."""
LOG_DRAIN_S = 10.0
"""After the Job finished, how long to wait for the rest of its log streams."""
FAILED_CREATE_CHECK_S = 5.0
"""While a Job has no pod, how often its Warning events are read (FailedCreate: quota, PodSecurity)."""
DEFAULT_API_OUTAGE_S = 600.0
"""Give up following a Job whose API server has not answered for this long."""
NEVER_STARTS = frozenset({"InvalidImageName", "CreateContainerConfigError", "ErrImageNeverPull"})
"""Container waiting reasons that no amount of waiting fixes."""
PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff"})
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$")


# -- settings parsing --------------------------------------------------------------------------------------


def _items(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def parse_node_selector(text: str | None) -> dict[str, str]:
    """`key=value,key=value` (as `kubectl get -l` writes equality selectors); empty: no selector."""
    selector = {}
    for item in _items(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"node selector {item!r}: expected label=value")
        selector[key.strip()] = value.strip()
    return selector


def parse_tolerations(text: str | None) -> tuple[Toleration, ...]:
    """`key[=value][:Effect],...` (the syntax of `kubectl taint`): without a value the toleration's operator
    is Exists, with one Equal; without an effect it tolerates every effect. Empty: none."""
    tolerations = []
    for item in _items(text):
        body, _, effect = item.partition(":")
        key, sep, value = body.partition("=")
        try:
            tolerations.append(
                Toleration(
                    key=key.strip(),
                    operator="Equal" if sep else "Exists",
                    value=value.strip() if sep else None,
                    effect=effect.strip() or None,  # type: ignore[arg-type]
                )
            )
        except ValueError as exc:
            raise ValueError(
                f"toleration {item!r}: expected key[=value][:NoSchedule|PreferNoSchedule|NoExecute]"
            ) from exc
    return tuple(tolerations)


def parse_resources(text: str | None, default: Resources) -> Resources:
    """`cpu=REQUEST/LIMIT,memory=REQUEST/LIMIT,ephemeral-storage=REQUEST/LIMIT` (Kubernetes quantities; one
    value sets both), each overriding `default`'s; empty: `default`."""
    values = default.model_dump()
    for item in _items(text):
        name, sep, quantities = item.partition("=")
        name = name.strip()
        if not sep or name not in ("cpu", "memory", "ephemeral-storage"):
            raise ValueError(f"resources {item!r}: expected cpu|memory|ephemeral-storage=REQUEST/LIMIT")
        request, _, limit = quantities.partition("/")
        request, limit = request.strip(), (limit.strip() or request.strip())
        for quantity in (request, limit):
            if not _QUANTITY.match(quantity):
                raise ValueError(f"resources {item!r}: {quantity!r} is not a Kubernetes quantity")
        field_name = name.replace("-", "_")
        values[f"{field_name}_request"], values[f"{field_name}_limit"] = request, limit
    return Resources(**values)


# -- the registry side of a build --------------------------------------------------------------------------


@contextlib.contextmanager
def registry_client_for(host: str, access: RegistryAccess) -> Iterator[RegistryClient]:
    """A registry client as the Job reaches the registry: HTTPS verified (with the private CA, written to a
    temporary file for the client), or plain HTTP when `access.tls_verify` is False (the Job's
    `plain_http`: a test registry; never Harbor in production)."""
    from thinkube_pipelines.registry.client import RegistryClient

    auth = access.auth if access.auth is not None and access.auth.host == host else None
    username, password = (auth.username, auth.password) if auth else (None, None)
    with tempfile.TemporaryDirectory(prefix="thinkube-k8s-registry-") as tmp:
        verify: bool | str = True
        if access.ca_pem:
            ca_file = os.path.join(tmp, "ca.crt")
            with open(ca_file, "w") as handle:
                handle.write(access.ca_pem)
            verify = ca_file
        scheme = "https" if access.tls_verify else "http"
        yield RegistryClient(f"{scheme}://{host}", username, password, verify_tls=verify)


def keep_context(client: RegistryClient, repository: str, digest: str, size: int) -> str:
    """Reference the context blob from an OCI artifact manifest tagged `context-<hex>`, so that the
    registry's garbage collector keeps it while a build needs it; returns the tag."""
    empty = client.push_blob(repository, b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": CONTEXT_ARTIFACT_TYPE,
        "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
        "layers": [{"mediaType": OCI_TAR_LAYER, "digest": digest, "size": size}],
        "annotations": {"org.opencontainers.image.title": "thinkube-pipelines build context"},
    }
    raw = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    tag = CONTEXT_TAG_PREFIX + digest.removeprefix("sha256:")
    client.put_manifest(repository, tag, raw, OCI_MANIFEST, action=f"keep build context {tag}")
    return tag


def split_target(target: str) -> tuple[str, str, str]:
    """`host/repository:tag` -> (host, repository, tag)."""
    host, _, rest = target.partition("/")
    repository, _, tag = rest.rpartition(":")
    if not host or not repository or not tag:
        raise ValueError(f"{target!r} is not host/repository:tag")
    return host, repository, tag


# -- following one Job -------------------------------------------------------------------------------------


def _conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def _true(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    cond = _conditions(obj).get(kind)
    return cond if cond is not None and cond.get("status") == "True" else None


def _statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])


def _container_status(pod: dict[str, Any] | None, container: str) -> dict[str, Any] | None:
    for entry in _statuses(pod or {}):
        if entry.get("name") == container:
            return entry
    return None


def _is_running(pod: dict[str, Any]) -> bool:
    """Whether one of the pod's containers runs (else it waits: to be created, for its image, a volume)."""
    return any((s.get("state") or {}).get("running") for s in _statuses(pod))


def _version(obj: dict[str, Any]) -> int:
    """An object's resourceVersion as a number (etcd's revision; opaque to clients, so 0 when it is not)."""
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


def _terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _memory_limit(pod: dict[str, Any], container: str) -> str | None:
    for spec in (pod.get("spec") or {}).get("containers") or []:
        if spec.get("name") == container:
            return ((spec.get("resources") or {}).get("limits") or {}).get("memory")
    return None


def describe_pod(pod: dict[str, Any]) -> str:
    """Why a pod failed or is not running, in one sentence: its node, the container that failed, its reason
    (OOMKilled, Error and exit code, a waiting reason), the pod's own reason (Evicted, DeadlineExceeded)."""
    name = pod["metadata"]["name"]
    node = (pod.get("spec") or {}).get("nodeName")
    where = f"pod {name} on node {node}" if node else f"pod {name} (not scheduled)"
    status = pod.get("status") or {}
    parts = []
    if status.get("reason"):
        parts.append(f"{status['reason']}: {(status.get('message') or '').strip()}".rstrip(": "))
    for entry in _statuses(pod):
        state = entry.get("state") or {}
        terminated = state.get("terminated")
        waiting = state.get("waiting")
        if terminated and terminated.get("exitCode") not in (0, None):
            reason = terminated.get("reason") or "Error"
            text = f"container {entry['name']} {reason} (exit code {terminated['exitCode']})"
            if reason == "OOMKilled":
                limit = _memory_limit(pod, entry["name"])
                text += f": it used more than its memory limit{f' ({limit})' if limit else ''}"
            message = (terminated.get("message") or "").strip()
            if message and reason != "OOMKilled":
                last = message.splitlines()[-1]
                text += f": {last[:300]}"
            parts.append(text)
        elif waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            message = (waiting.get("message") or "").strip()
            parts.append(
                f"container {entry['name']} {waiting['reason']}" + (f": {message}" if message else "")
            )
    disruption = _true(pod, "DisruptionTarget")
    if disruption and not status.get("reason"):
        parts.append(
            f"DisruptionTarget {disruption.get('reason')}: {disruption.get('message') or ''}".strip()
        )
    if not parts:
        parts.append(f"phase {status.get('phase') or 'unknown'}")
    return f"{where}: " + "; ".join(parts)


def _iter_lines(response: Any) -> Iterator[str]:
    """The lines of a streamed HTTP answer, each as soon as its newline arrives."""
    buffer = b""
    for chunk in response.stream(65536, decode_content=True):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace").rstrip("\r")
    if buffer:
        yield buffer.decode(errors="replace").rstrip("\r")


@dataclass
class JobOutcome:
    """How a followed Job ended."""

    status: str
    """`succeeded`, `failed`, `stuck` (a pod never started; the Job was deleted), `timed_out` (the command
    ran past its limit; the Job was deleted), `deleted` (someone else deleted the Job)."""
    reason: str
    job: dict[str, Any]
    pods: dict[str, dict[str, Any]]
    pod: dict[str, Any] | None
    """The pod that decided: the succeeded one, the last failed one, the one that never started."""
    earlier: list[str] = field(default_factory=list)
    """What happened to the pods before it (evicted, failed and replaced)."""


class JobFollower:
    """Watches one Job and its pods, follows the logs of `containers`, and decides how it ended.

    Watches and log streams run in daemon threads that only put items in a queue; everything else (the
    caller's `on_line` included) happens in the calling thread."""

    def __init__(
        self,
        api: ApiClient,
        job: dict[str, Any],
        *,
        containers: tuple[str, ...],
        on_line: LineSink,
        cluster: str,
        schedule_timeout_s: float,
        start_timeout_s: float,
        api_timeout_s: float = 30.0,
        command_container: str | None = None,
        command_timeout_s: float | None = None,
        api_outage_s: float = DEFAULT_API_OUTAGE_S,
    ) -> None:
        from kubernetes.client import BatchV1Api, CoreV1Api

        self.core = CoreV1Api(api)
        self.batch = BatchV1Api(api)
        self.job = job
        self.name = job["metadata"]["name"]
        self.namespace = job["metadata"]["namespace"]
        self.uid = job["metadata"]["uid"]
        self.containers = containers
        self.on_line = on_line
        self.cluster = cluster
        self.schedule_timeout_s = schedule_timeout_s
        self.start_timeout_s = start_timeout_s
        self.api_timeout_s = api_timeout_s
        self.command_container = command_container
        self.command_timeout_s = command_timeout_s
        self.api_outage_s = api_outage_s
        self.what = f'Job "{self.name}" in namespace "{self.namespace}" of {cluster}'
        self.lines: list[str] = []
        """Every log line of the followed containers, in the order they came."""
        self.container_lines: dict[str, list[str]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._followers: dict[tuple[str, str], threading.Thread] = {}
        self._responses: set[Any] = set()
        self._lock = threading.Lock()
        self._created_at = time.monotonic()
        self._api_ok_at = self._created_at
        self._events_checked_at = 0.0
        self._first_seen: dict[str, float] = {}
        self._scheduled_at: dict[str, float] = {}
        self._running_since: dict[str, float] = {}
        self._waiting_since: dict[str, float] = {}
        self._said: set[tuple[str, ...]] = set()
        self._failure_target_at: float | None = None
        self._job_deleted = False
        self._earlier: list[str] = []

    # -- the calling thread ---------------------------------------------------------------------------------

    def follow(self) -> JobOutcome:
        """Until the Job succeeded, failed, or one of the timeouts decided; the threads are stopped after."""
        self._spawn(self._watch, "job", partial(self.batch.list_namespaced_job, self.namespace),
                    field_selector=f"metadata.name={self.name}")  # fmt: skip
        self._spawn(self._watch, "pod", partial(self.core.list_namespaced_pod, self.namespace),
                    label_selector=f"batch.kubernetes.io/controller-uid={self.uid}")  # fmt: skip
        try:
            while True:
                with contextlib.suppress(queue.Empty):
                    self._handle(self._queue.get(timeout=TICK_S))
                self._drain()
                outcome = self._decide()
                if outcome is not None:
                    return self._finish(outcome)
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            responses = list(self._responses)
        for response in responses:
            with contextlib.suppress(Exception):
                response.shutdown()

    def say(self, text: str, *key: str) -> None:
        """An observation of the cluster's, once per `key` (when given)."""
        if key:
            if key in self._said:
                return
            self._said.add(key)
        self.on_line(LOG_PREFIX + text)

    def _drain(self) -> None:
        while True:
            try:
                self._handle(self._queue.get_nowait())
            except queue.Empty:
                return

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "line":
            _, (_, container), text = item
            self.lines.append(text)
            self.container_lines.setdefault(container, []).append(text)
            self.on_line(text)
        elif kind == "job":
            _, event, obj = item
            if event == "DELETED":
                self._job_deleted = True
            else:
                self.job = obj
        elif kind == "pod":
            _, event, obj = item
            name = obj["metadata"]["name"]
            previous = self.pods.get(name)
            if previous is not None and _version(obj) < _version(previous):
                return  # an older state from a relist
            if event == "DELETED":
                obj = {**obj, "_deleted": True}
            self.pods[name] = obj
            self._observe(obj)
        elif kind == "warning":
            self.say(item[1])

    def _observe(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        now = time.monotonic()
        if name not in self._first_seen:
            self._first_seen[name] = now
            self.say(f"pod {name} created", name, "created")
        node = (pod.get("spec") or {}).get("nodeName")
        if node and name not in self._scheduled_at:
            self._scheduled_at[name] = now
            self.say(f"pod {name} scheduled on node {node}", name, "scheduled")
        scheduled = _conditions(pod).get("PodScheduled") or {}
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            message = scheduled.get("message") or ""
            self.say(f"pod {name} cannot be scheduled yet: {message}", name, "unschedulable", message)
        for entry in _statuses(pod):
            container = entry.get("name", "")
            state = entry.get("state") or {}
            waiting = state.get("waiting") or {}
            if waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                message = waiting.get("message") or ""
                self.say(
                    f"pod {name}: container {container} {waiting['reason']}"
                    + (f": {message}" if message else ""),
                    name,
                    container,
                    waiting["reason"],
                )
            if (state.get("running") or state.get("terminated")) and container in self.containers:
                if container == self.command_container and state.get("running"):
                    self._running_since.setdefault(name, now)
                key = (name, container)
                if key not in self._followers:
                    self._followers[key] = self._spawn(self._follow_log, name, container)
        if _terminal(pod) and (pod.get("status") or {}).get("phase") == "Failed":
            text = describe_pod(pod)
            if _true(pod, "DisruptionTarget") or (pod.get("status") or {}).get("reason") == "Evicted":
                text += " (a disruption: Kubernetes replaces the pod without counting it toward backoffLimit)"
            if self.say_once(name, "failed"):
                self._earlier.append(text)
                self.say(text)
        elif pod.get("_deleted") and not _terminal(pod) and self.say_once(name, "failed"):
            text = f"{describe_pod(pod)} (deleted before it finished: by someone, or with its lost node)"
            self._earlier.append(text)
            self.say(text)

    def say_once(self, *key: str) -> bool:
        if key in self._said:
            return False
        self._said.add(key)
        return True

    def _live_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods.values() if not p.get("_deleted") and not _terminal(p)]

    def _decide(self) -> JobOutcome | None:
        job = self.job
        now = time.monotonic()
        done = _true(job, "SuccessCriteriaMet") or _true(job, "Complete")
        if done:
            return self._outcome("succeeded", done.get("message") or "succeeded")
        failed = _true(job, "Failed")
        if failed is None:
            target = _true(job, "FailureTarget")
            if target is not None:
                self._failure_target_at = self._failure_target_at or now
                if now - self._failure_target_at > FAILED_GRACE_S or not self._live_pods():
                    failed = target
        if failed is not None:
            return self._outcome("failed", f"{failed.get('reason')}: {failed.get('message') or ''}".strip())
        if self._job_deleted:
            return self._outcome("deleted", "the Job was deleted (by someone else, or by its TTL)")
        for pod in self._live_pods():
            name = pod["metadata"]["name"]
            if name not in self._scheduled_at:
                if now - self._first_seen[name] > self.schedule_timeout_s:
                    return self._outcome("stuck", self._unscheduled(pod), pod)
                continue
            for entry in _statuses(pod):
                reason = ((entry.get("state") or {}).get("waiting") or {}).get("reason")
                if reason in NEVER_STARTS:
                    return self._outcome("stuck", describe_pod(pod), pod)
            if _is_running(pod):
                self._waiting_since.pop(name, None)
            elif now - self._waiting_since.setdefault(name, now) > self.start_timeout_s:
                return self._outcome("stuck", self._not_starting(pod), pod)
            since = self._running_since.get(name)
            if (
                self.command_timeout_s is not None
                and since is not None
                and now - since > self.command_timeout_s
                and (
                    ((_container_status(pod, self.command_container or "") or {}).get("state") or {}).get(
                        "running"
                    )
                )
            ):
                return self._outcome("timed_out", f"ran longer than {self.command_timeout_s:g} s", pod)
        if not self.pods and now - self._created_at > FAILED_CREATE_CHECK_S:
            late = now - self._created_at > self.start_timeout_s
            if late or now - self._events_checked_at > FAILED_CREATE_CHECK_S:
                self._events_checked_at = now
                event = self._last_warning("Job", self.name)
                if event and event.startswith("FailedCreate"):
                    return self._outcome("stuck", f"the Job controller cannot create its pod: {event}")
                if late:
                    return self._outcome("stuck", f"no pod was created: {event or 'no event says why'}")
        if now - self._api_ok_at > self.api_outage_s:
            return self._outcome(
                "lost",
                f"the API server has not answered for {now - self._api_ok_at:.0f} s; the Job was left as it "
                "is (it may still run)",
            )
        return None

    def _outcome(self, status: str, reason: str, pod: dict[str, Any] | None = None) -> JobOutcome:
        return JobOutcome(status, reason, self.job, self.pods, pod, list(self._earlier))

    def _unscheduled(self, pod: dict[str, Any]) -> str:
        scheduled = _conditions(pod).get("PodScheduled") or {}
        message = scheduled.get("message") or self._last_warning("Pod", pod["metadata"]["name"])
        return (
            f"pod {pod['metadata']['name']} was not scheduled within {self.schedule_timeout_s:g} s: "
            f"FailedScheduling: {message or 'the scheduler has not said why'}"
        )

    def _not_starting(self, pod: dict[str, Any]) -> str:
        text = describe_pod(pod)
        if not any(
            ((s.get("state") or {}).get("waiting") or {}).get("reason")
            not in (None, "ContainerCreating", "PodInitializing")
            for s in _statuses(pod)
        ):
            event = self._last_warning("Pod", pod["metadata"]["name"])
            if event:
                text += f"; {event}"
        return f"{text} (no container ran for {self.start_timeout_s:g} s)"

    def _last_warning(self, kind: str, name: str) -> str | None:
        """The latest Warning event about an object: `Reason: message`."""
        try:
            listed = _call(
                lambda: self.core.list_namespaced_event(
                    self.namespace,
                    field_selector=f"involvedObject.kind={kind},involvedObject.name={name}",
                    _preload_content=False,
                    _request_timeout=self.api_timeout_s,
                ),
                f"events of {kind} {name} in namespace {self.namespace}",
            )
        except KubernetesError:
            return None
        warnings = [e for e in listed.get("items") or [] if e.get("type") == "Warning"]
        if not warnings:
            return None
        latest = max(warnings, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return f"{latest.get('reason')}: {latest.get('message')}"

    def _finish(self, outcome: JobOutcome) -> JobOutcome:
        """Collect the rest of the logs, and the final state of the pods, before answering."""
        deadline = time.monotonic() + LOG_DRAIN_S
        if outcome.status in ("succeeded", "failed"):
            # The Job's watch and the pods' are separate streams: the Job's condition can arrive before the
            # pod state that caused it.
            phase = "Succeeded" if outcome.status == "succeeded" else "Failed"
            if not any((p.get("status") or {}).get("phase") == phase for p in self.pods.values()):
                self._relist_pods()
            while any(t.is_alive() for t in self._followers.values()) and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    self._handle(self._queue.get(timeout=TICK_S))
        self._drain()
        outcome.pods = self.pods
        outcome.job = self.job
        outcome.earlier = list(self._earlier)
        if outcome.pod is None:
            outcome.pod = self._deciding_pod(outcome.status)
        if outcome.pod is not None:
            # The deciding pod's own failure is the reason, not an earlier one.
            own = describe_pod(outcome.pod)
            outcome.earlier = [e for e in outcome.earlier if not e.startswith(own.split(":")[0] + ":")]
        return outcome

    def _relist_pods(self) -> None:
        with contextlib.suppress(KubernetesError):
            listed = _call(
                lambda: self.core.list_namespaced_pod(
                    self.namespace,
                    label_selector=f"batch.kubernetes.io/controller-uid={self.uid}",
                    _preload_content=False,
                    _request_timeout=self.api_timeout_s,
                ),
                f"pods of {self.what}",
            )
            for pod in listed.get("items") or []:
                self._handle(("pod", "MODIFIED", pod))

    def _deciding_pod(self, status: str) -> dict[str, Any] | None:
        pods = sorted(self.pods.values(), key=lambda p: p["metadata"].get("creationTimestamp") or "")
        phase = "Succeeded" if status == "succeeded" else "Failed"
        matching = [p for p in pods if (p.get("status") or {}).get("phase") == phase]
        if matching:
            return matching[-1]
        return pods[-1] if pods else None

    # -- threads --------------------------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], *args: Any, **kwargs: Any) -> threading.Thread:
        thread = threading.Thread(
            target=target, args=args, kwargs=kwargs, daemon=True, name=f"k8s-{self.name}"
        )
        thread.start()
        self._threads.append(thread)
        return thread

    def _track(self, response: Any) -> None:
        with self._lock:
            self._responses.add(response)
        if self._stop.is_set():
            with contextlib.suppress(Exception):
                response.shutdown()

    def _untrack(self, response: Any) -> None:
        with self._lock:
            self._responses.discard(response)
        with contextlib.suppress(Exception):
            response.release_conn()

    def _watch(self, kind: str, list_fn: Callable[..., Any], **selectors: str) -> None:
        """List, then watch from the list's resourceVersion; relist after 410 Gone or repeated failures."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        version: str | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = _call(
                        lambda: list_fn(
                            **selectors, _preload_content=False, _request_timeout=self.api_timeout_s
                        ),
                        f"{kind}s of {self.what}",
                    )
                    version = listed["metadata"].get("resourceVersion")
                    self._api_ok_at = time.monotonic()
                    for obj in listed.get("items") or []:
                        self._queue.put((kind, "ADDED", obj))
                response = list_fn(
                    **selectors,
                    watch=True,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_S,
                    _preload_content=False,
                    _request_timeout=(self.api_timeout_s, WATCH_S + 30),
                )
                self._track(response)
                self._api_ok_at = watched = time.monotonic()
                try:
                    for line in _iter_lines(response):
                        self._api_ok_at = time.monotonic()
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            if obj.get("code") == 410:
                                version = None
                                break
                            raise KubernetesError(f"watching {kind}s of {self.what}: {obj.get('message')}")
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if event.get("type") != "BOOKMARK":
                            self._queue.put((kind, event.get("type"), obj))
                finally:
                    self._untrack(response)
                failures = 0
                if time.monotonic() - watched < 0.5:  # closed at once: do not spin
                    self._stop.wait(0.5)
            except (KubernetesError, ApiException, HTTPError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    return
                if isinstance(exc, ApiException) and exc.status == 410:
                    version = None
                    continue
                failures += 1
                if failures in (1, 5) or failures % 20 == 0:
                    self._queue.put(("warning", f"watching the {kind}s of Job {self.name}: {exc} (retrying)"))
                if failures > 3:
                    version = None
                self._stop.wait(min(0.2 * 2**failures, 5.0))

    def _container_finished(self, pod_name: str, container: str) -> bool:
        pod = self.pods.get(pod_name)
        if pod is None:
            return False
        if pod.get("_deleted") or _terminal(pod):
            return True
        state = (_container_status(pod, container) or {}).get("state") or {}
        return bool(state.get("terminated"))

    def _stream_ended_with_container(self, pod_name: str, container: str) -> bool:
        """A followed log ends when its container exits, and the pod's new state reaches the watch a moment
        later: wait for it (up to LOG_END_GRACE_S) rather than reopen at once and read the whole log again
        (a build's log is megabytes). Still running after that: the stream was cut, reopen it."""
        deadline = time.monotonic() + LOG_END_GRACE_S
        while not self._stop.is_set():
            if self._container_finished(pod_name, container):
                return True
            if time.monotonic() >= deadline:
                return False
            self._stop.wait(0.02)
        return True

    def _follow_log(self, pod_name: str, container: str) -> None:
        """Stream one container's log into the queue; reconnect (skipping the lines already seen) when the
        stream ends before the container did."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        seen = 0
        failures = 0
        key = (pod_name, container)
        try:
            while not self._stop.is_set():
                try:
                    response = self.core.read_namespaced_pod_log(
                        pod_name,
                        self.namespace,
                        container=container,
                        follow=True,
                        _preload_content=False,
                        _request_timeout=(self.api_timeout_s, None),
                    )
                    self._track(response)
                    try:
                        index = 0
                        for line in _iter_lines(response):
                            index += 1
                            if index <= seen:
                                continue
                            seen += 1
                            self._queue.put(("line", key, line))
                    finally:
                        self._untrack(response)
                    if self._stream_ended_with_container(pod_name, container):
                        return
                except ApiException as exc:
                    if exc.status == 404 or self._container_finished(pod_name, container):
                        return
                    failures += 1
                    if exc.status != 400 and failures > 20:  # 400: not started yet, or being restarted
                        self._queue.put(("warning", f"log of {pod_name}/{container}: {exc.reason}"))
                        return
                    self._stop.wait(min(0.1 * failures, 2.0))
                except (HTTPError, OSError) as exc:
                    if self._stop.is_set():
                        return
                    failures += 1
                    if failures > 20:
                        self._queue.put(("warning", f"log of {pod_name}/{container}: {exc}"))
                        return
                    self._stop.wait(min(0.1 * failures, 2.0))
        finally:
            self._queue.put(("log-end", key))


# -- the Jobs' common resource -----------------------------------------------------------------------------


class KubernetesJobs(dg.ConfigurableResource):
    """Where and how the build and check Jobs run: the cluster and its namespace, the registry Secret and CA
    ConfigMap the pods mount, their placement, and how long a pod may take to be scheduled and started."""

    cluster: KubernetesCluster = Field(
        description="The cluster and the namespace of the Jobs (its `namespace`; None: the context's, or "
        f"in a pod its own; ${JOBS_NAMESPACE_ENV})."
    )
    registry_secret: str = Field(
        DEFAULT_REGISTRY_SECRET,
        description="Secret (type kubernetes.io/dockerconfigjson) in the Jobs' namespace: BuildKit pushes "
        "with it, the init container fetches the context with it, check pods pull with it "
        f"(${BUILD_REGISTRY_SECRET_ENV}).",
    )
    ca_configmap: str = Field(
        DEFAULT_CA_CONFIGMAP,
        description="ConfigMap (key ca.crt) with the registry's CA, mounted when the registry has a private "
        f"CA (THINKUBE_REGISTRY_CA_BUNDLE set) (${REGISTRY_CA_CONFIGMAP_ENV}).",
    )
    node_selector: str = Field(
        DEFAULT_NODE_SELECTOR,
        description="Node labels the pods require, `key=value,...`; empty: any node "
        f"(${JOB_NODE_SELECTOR_ENV}).",
    )
    tolerations: str = Field(
        DEFAULT_TOLERATIONS,
        description="Taints the pods tolerate, `key[=value][:Effect],...` as `kubectl taint` writes them; "
        f"empty: none (${JOB_TOLERATIONS_ENV}). A GPU check always tolerates the GPU taint.",
    )
    service_account: str | None = Field(
        None, description="ServiceAccount of the build pods (no token mounted)."
    )
    schedule_timeout_s: int = Field(
        DEFAULT_SCHEDULE_TIMEOUT_S,
        description="Give up on a pod the scheduler could not place for this long (e.g. every GPU busy), "
        f"quoting its FailedScheduling message (${SCHEDULE_TIMEOUT_ENV}).",
    )
    start_timeout_s: int = Field(
        DEFAULT_START_TIMEOUT_S,
        description="Give up on a scheduled pod none of whose containers started in this long (image pull, "
        f"volume mount) (${START_TIMEOUT_ENV}).",
    )
    api_timeout_s: float = Field(30.0, gt=0, description="Seconds one API request may take.")

    _run_id: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Remember the run (its Jobs carry its id), and check the settings before any step."""
        self._run_id = context.run.run_id if context.run is not None else None
        self.placement()
        self.check_settings()
        for setting, value in (
            (SCHEDULE_TIMEOUT_ENV, self.schedule_timeout_s),
            (START_TIMEOUT_ENV, self.start_timeout_s),
        ):
            if value <= 0:
                raise ValueError(f"{setting}={value}: must be a number of seconds above 0")
        try:
            self.cluster.configuration()  # read locally: nothing is sent to the cluster yet
        except KubernetesError as exc:
            raise ValueError(f"the Kubernetes builder and runner need a cluster: {exc}") from exc

    def check_settings(self) -> None:
        """Overridden to parse each implementation's own settings."""

    @property
    def run_id(self) -> str:
        return self._run_id or "none"

    def placement(self) -> Placement:
        try:
            return Placement(
                node_selector=parse_node_selector(self.node_selector),
                tolerations=parse_tolerations(self.tolerations),
            )
        except ValueError as exc:
            raise ValueError(f"{JOB_NODE_SELECTOR_ENV} / {JOB_TOLERATIONS_ENV}: {exc}") from exc

    def namespace(self) -> str:
        return self.cluster.default_namespace()

    @contextlib.contextmanager
    def api(self) -> Iterator[tuple[ApiClient, str]]:
        """A client of the cluster and the cluster's description (for messages)."""
        from kubernetes import client

        configuration = self.cluster.configuration()
        with client.ApiClient(configuration) as api:
            yield api, self.cluster.describe(configuration)

    def follower(
        self, api: ApiClient, job: dict[str, Any], cluster: str, on_line: LineSink, **extra: Any
    ) -> JobFollower:
        return JobFollower(
            api,
            job,
            on_line=on_line,
            cluster=cluster,
            schedule_timeout_s=self.schedule_timeout_s,
            start_timeout_s=self.start_timeout_s,
            api_timeout_s=self.api_timeout_s,
            **extra,
        )

    # -- Job requests ---------------------------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        return {"_preload_content": False, "_request_timeout": self.api_timeout_s}

    def list_jobs(self, api: ApiClient, namespace: str, selector: str, cluster: str) -> list[dict[str, Any]]:
        from kubernetes.client import BatchV1Api

        batch = BatchV1Api(api)
        listed = _call(
            lambda: batch.list_namespaced_job(namespace, label_selector=selector, **self._options()),
            f'Jobs "{selector}" in namespace "{namespace}" of {cluster}',
        )
        return list(listed.get("items") or [])

    def create_job(self, api: ApiClient, manifest: dict[str, Any], cluster: str) -> dict[str, Any]:
        from kubernetes.client import BatchV1Api

        batch = BatchV1Api(api)
        meta = manifest["metadata"]
        return _call(
            lambda: batch.create_namespaced_job(meta["namespace"], manifest, **self._options()),
            f'Job "{meta["name"]}" in namespace "{meta["namespace"]}" of {cluster}',
        )

    def delete_job(self, api: ApiClient, namespace: str, name: str, cluster: str) -> None:
        """Delete a Job and (in the background, by the garbage collector) its pods; gone already is fine."""
        from kubernetes.client import BatchV1Api

        batch = BatchV1Api(api)
        _call(
            lambda: batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background", **self._options()
            ),
            f'Job "{name}" in namespace "{namespace}" of {cluster}',
            missing_ok=True,
        )

    def cancel(self, selector: str, on_line: LineSink) -> None:
        """Delete every Job matching `selector` (an interrupted step's), with a fresh client: the step's may
        be in the middle of a request."""
        try:
            with self.api() as (api, cluster):
                namespace = self.namespace()
                for job in self.list_jobs(api, namespace, selector, cluster):
                    name = job["metadata"]["name"]
                    self.delete_job(api, namespace, name, cluster)
                    on_line(f"{LOG_PREFIX}cancelled: deleted Job {namespace}/{name} and its pods")
        except Exception as exc:  # the interruption goes on regardless; say what is left behind
            on_line(f"{LOG_PREFIX}cancelled, but could not delete the Jobs {selector!r}: {exc}")


def _finished(job: dict[str, Any]) -> str | None:
    """`Complete`, `Failed`, or None while the Job runs."""
    for kind in ("Complete", "SuccessCriteriaMet"):
        if _true(job, kind):
            return "Complete"
    if _true(job, "Failed") or _true(job, "FailureTarget"):
        return "Failed"
    return None


def _attempt(job: dict[str, Any]) -> int:
    try:
        return int((job["metadata"].get("annotations") or {}).get(ATTEMPT_ANNOTATION) or 1)
    except ValueError:
        return 1


def _kept(namespace: str, name: str) -> str:
    return f"the Job is kept for its logs: kubectl -n {namespace} logs job/{name} --all-containers"


class KubernetesBuilder(KubernetesJobs, ImageBuilder):
    """Builds each image in a BuildKit rootless Job (build_job.py) on the cluster's GPU nodes, and pushes it
    to the registry by the Job; see the module's docstring for the whole protocol."""

    build_resources: str = Field(
        "",
        description="The build container's requests and limits, `cpu=2/8,memory=8Gi/32Gi,"
        "ephemeral-storage=50Gi/100Gi` (REQUEST/LIMIT; each overrides build_job.default_build_resources) "
        f"(${BUILD_RESOURCES_ENV}).",
    )
    registry_cache: bool = Field(
        True,
        description="Import and export BuildKit's layer cache at `<repository>:buildcache` "
        f"(type=registry,mode=max) (${BUILD_CACHE_ENV}=registry|none).",
    )
    backoff_limit: int = Field(
        2, ge=0, description="Retries of a pod that failed for another reason than the build."
    )
    active_deadline_s: int = Field(3 * 3600, gt=0, description="The build Job's time limit.")
    buildkit_image: str = Field(
        BUILDKIT_IMAGE, description=f"BuildKit rootless image (${BUILDKIT_IMAGE_ENV})."
    )
    context_fetch_image: str = Field(
        CONTEXT_FETCH_IMAGE,
        description=f"Image of the context init container: oras (${CONTEXT_FETCH_IMAGE_ENV}).",
    )

    def check_settings(self) -> None:
        self.resources()

    def resources(self) -> Resources:
        try:
            return parse_resources(self.build_resources, default_build_resources())
        except ValueError as exc:
            raise ValueError(f"{BUILD_RESOURCES_ENV}: {exc}") from exc

    def build(self, request: BuildRequest, on_line: LineSink | None = None) -> BuildResult:
        """Push the context, run the build Job, follow it, and return the digest the registry serves."""
        started = time.monotonic()
        sink: LineSink = on_line or (lambda _line: None)
        name = request.image_name
        try:
            request.context.verify()
            host, repository, tag = split_target(request.target)
            placement, resources = self.placement(), self.resources()
        except ValueError as exc:
            raise BuildError(name, None, str(exc)) from exc
        size = len(request.context.archive)
        if size > MAX_CONTEXT_BYTES:
            raise BuildError(
                name,
                "send the build context",
                f"the build context is {size} bytes; a Kubernetes build takes at most {MAX_CONTEXT_BYTES} "
                "bytes (build_job.MAX_CONTEXT_BYTES): keep large files out of the image folder",
            )
        from thinkube_pipelines.registry.client import RegistryError

        with registry_client_for(host, request.registry) as client:
            step = f"push the build context to registry {host}"
            try:
                digest = client.push_blob(repository, request.context.archive)
                keep_context(client, repository, digest, size)
            except RegistryError as exc:
                raise BuildError(name, step, str(exc)) from exc
            sink(f"{LOG_PREFIX}build context {digest} ({size} bytes) in {host}/{repository}")
            build_key = request.labels.get(BUILD_KEY_IMAGE_LABEL) or tag.removeprefix("build-")
            spec = BuildJobSpec(
                namespace=self.namespace(),
                image_name=name,
                build_key=build_key,
                run_id=self.run_id,
                target=request.target,
                context_blob=f"{host}/{repository}@{digest}",
                context_size=size,
                dockerfile=request.context.dockerfile,
                build_args=dict(request.build_args),
                image_labels=dict(request.labels),
                platform=request.platform,
                cache_ref=f"{host}/{repository}:buildcache" if self.registry_cache else None,
                registry_secret=self.registry_secret,
                ca_configmap=self.ca_configmap if request.registry.ca_pem else None,
                plain_http=not request.registry.tls_verify,
                placement=placement,
                resources=resources,
                backoff_limit=self.backoff_limit,
                active_deadline_s=self.active_deadline_s,
                service_account=self.service_account,
                buildkit_image=self.buildkit_image,
                context_fetch_image=self.context_fetch_image,
            )
            labels = build_labels(spec)
            mine = f"{BUILD_KEY_LABEL}={labels[BUILD_KEY_LABEL]},{RUN_ID_LABEL}={labels[RUN_ID_LABEL]}"
            try:
                with self.api() as (api, cluster):
                    job, spec = self._create_or_follow(api, cluster, spec, sink)
                    follower = self.follower(
                        api, job, cluster, sink, containers=(CONTEXT_CONTAINER, BUILDKIT_CONTAINER)
                    )
                    outcome = follower.follow()
                    return self._result(api, cluster, client, request, spec, outcome, follower, started, sink)
            except KubernetesError as exc:
                raise BuildError(name, "run the build Job", str(exc)) from exc
            except Exception:
                raise
            except BaseException:
                sink(f"{LOG_PREFIX}interrupted: deleting the build Jobs of this run ({mine})")
                self.cancel(mine, sink)
                raise

    def _create_or_follow(
        self, api: ApiClient, cluster: str, spec: BuildJobSpec, sink: LineSink
    ) -> tuple[dict[str, Any], BuildJobSpec]:
        """The Job to follow: one of this build key that runs or succeeded (same target and context), else a
        new one whose attempt is one more than any Job of the key still there."""
        labels = build_labels(spec)
        selector = f"{BUILD_KEY_LABEL}={labels[BUILD_KEY_LABEL]},{IMAGE_LABEL}={labels[IMAGE_LABEL]}"
        for _ in range(5):
            existing = self.list_jobs(api, spec.namespace, selector, cluster)
            same = [
                j
                for j in existing
                if (j["metadata"].get("annotations") or {}).get("thinkube.io/target") == spec.target
                and (j["metadata"].get("annotations") or {}).get("thinkube.io/context") == spec.context_blob
                and not j["metadata"].get("deletionTimestamp")
            ]
            usable = [j for j in same if _finished(j) != "Failed"]
            if usable:
                job = max(usable, key=_attempt)
                run = (job["metadata"].get("labels") or {}).get(RUN_ID_LABEL)
                sink(
                    f"{LOG_PREFIX}following Job {spec.namespace}/{job['metadata']['name']} "
                    f"({'succeeded' if _finished(job) else 'running'}, run {run}): it builds this very key"
                )
                return job, spec.model_copy(update={"attempt": _attempt(job)})
            attempt = 1 + max((_attempt(j) for j in existing), default=0)
            spec = spec.model_copy(update={"attempt": attempt})
            try:
                job = self.create_job(api, build_job_manifest(spec), cluster)
            except KubernetesError as exc:
                if exc.status == 409:  # created meanwhile by another run: look again
                    continue
                raise
            again = (
                f" (attempt {attempt}: earlier Jobs of this key failed and are kept)" if attempt > 1 else ""
            )
            sink(f"{LOG_PREFIX}created build Job {spec.namespace}/{spec.job_name} in {cluster}{again}")
            return job, spec
        raise KubernetesError(
            f"could not create a build Job for key {spec.build_key}: conflicting writers", 409
        )

    def _result(
        self,
        api: ApiClient,
        cluster: str,
        client: RegistryClient,
        request: BuildRequest,
        spec: BuildJobSpec,
        outcome: JobOutcome,
        follower: JobFollower,
        started: float,
        sink: LineSink,
    ) -> BuildResult:
        name, namespace, job_name = request.image_name, spec.namespace, spec.job_name
        step = f"build Job {namespace}/{job_name}"
        lines = follower.lines
        if outcome.status != "succeeded":
            raise BuildError(
                name, step, self._failure(api, cluster, spec, outcome, sink), self._tail(outcome, lines)
            )
        from thinkube_pipelines.registry.client import RegistryError

        _, repository, tag = split_target(request.target)
        try:
            served = client.digest_of(repository, tag)
        except RegistryError as exc:
            raise BuildError(
                name, step, f"the Job succeeded, but the registry could not be asked: {exc}"
            ) from exc
        digest, said = _reported_digest(outcome.pod)
        if outcome.pod is None and served:
            digest = served  # a succeeded Job followed after its pods were gone: the registry has the result
        if digest is None:
            raise BuildError(
                name,
                step,
                f"the Job succeeded but its pod reported no image digest (termination message {said!r}); "
                + _kept(namespace, job_name),
                log_tail(lines),
            )
        if served != digest:
            raise BuildError(
                name,
                step,
                f"BuildKit reported {digest}, but the registry serves {served or 'nothing'} for "
                f"{request.target}; " + _kept(namespace, job_name),
                log_tail(lines),
            )
        try:
            self.delete_job(api, namespace, job_name, cluster)
        except KubernetesError as exc:
            sink(f"{LOG_PREFIX}could not delete the succeeded Job {namespace}/{job_name}: {exc}")
        node = ((outcome.pod or {}).get("spec") or {}).get("nodeName")
        sink(
            f"{LOG_PREFIX}pushed {request.target} -> {digest}" + (f" (built on node {node})" if node else "")
        )
        return BuildResult(
            reference=request.target,
            digest=digest,
            duration_s=time.monotonic() - started,
            log_tail=log_tail(lines),
        )

    def _failure(
        self, api: ApiClient, cluster: str, spec: BuildJobSpec, outcome: JobOutcome, sink: LineSink
    ) -> str:
        namespace, job_name = spec.namespace, spec.job_name
        pod = describe_pod(outcome.pod) if outcome.pod is not None else None
        earlier = f" Earlier pods: {'; '.join(outcome.earlier)}." if outcome.earlier else ""
        if outcome.status == "stuck":
            try:
                self.delete_job(api, namespace, job_name, cluster)
                what = "the Job was deleted (it would otherwise start later with nobody waiting)"
            except KubernetesError as exc:
                what = f"deleting the Job failed too: {exc}"
            sink(f"{LOG_PREFIX}{outcome.reason}")
            return f"the build never started: {outcome.reason}; {what}.{earlier}"
        if outcome.status in ("deleted", "lost"):
            return f"{outcome.reason}.{earlier}"
        detail = f"{pod}; " if pod else ""
        return f"the build Job failed ({outcome.reason}): {detail}{_kept(namespace, job_name)}.{earlier}"

    @staticmethod
    def _tail(outcome: JobOutcome, lines: list[str]) -> tuple[str, ...]:
        if lines:
            return log_tail(lines)
        state = ((_container_status(outcome.pod, BUILDKIT_CONTAINER) or {}).get("state") or {}).get(
            "terminated"
        ) or {}
        return log_tail((state.get("message") or "").splitlines())


def _reported_digest(pod: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(digest, termination message) of the buildkit container: buildctl's metadata file."""
    state = ((_container_status(pod, BUILDKIT_CONTAINER) or {}).get("state") or {}).get("terminated") or {}
    message = state.get("message")
    try:
        metadata = json.loads(message or "")
    except ValueError:
        return None, message
    digest = metadata.get("containerimage.digest") if isinstance(metadata, dict) else None
    if isinstance(digest, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        return digest, message
    return None, message


class KubernetesRunner(KubernetesJobs, ImageRunner):
    """Runs a command in a pushed digest as a Job (run_job.py): the smoke check without a GPU, the GPU test
    with exactly the GPUs it asks for (and the GPU taint tolerated)."""

    check_resources: str = Field(
        "",
        description="The check container's requests and limits, as build_resources "
        f"(defaults: run_job.default_run_resources) (${CHECK_RESOURCES_ENV}).",
    )
    pull_allowance_s: int = Field(900, ge=0, description="Added to a check's timeout for the Job's deadline.")

    def check_settings(self) -> None:
        self.resources()

    def resources(self) -> Resources:
        try:
            return parse_resources(self.check_resources, default_run_resources())
        except ValueError as exc:
            raise ValueError(f"{CHECK_RESOURCES_ENV}: {exc}") from exc

    def run(self, request: RunRequest, on_line: LineSink | None = None) -> RunResult:
        sink: LineSink = on_line or (lambda _line: None)
        image_name = request.image.partition("@")[0].rpartition("/")[2]
        try:
            spec = RunJobSpec(
                namespace=self.namespace(),
                image_name=image_name,
                check="gpu" if request.gpus else "smoke",
                run_id=self.run_id,
                image=request.image,
                argv=tuple(request.argv),
                gpus=request.gpus,
                timeout_s=request.timeout_s,
                pull_allowance_s=self.pull_allowance_s,
                placement=self.placement(),
                resources=self.resources(),
                image_pull_secret=self.registry_secret if request.registry.auth is not None else None,
            )
        except ValueError as exc:
            raise RunError(f"run in {request.image}: {exc}") from exc
        labels = run_labels(spec)
        mine = (
            f"{IMAGE_LABEL}={labels[IMAGE_LABEL]},{CHECK_LABEL}={labels[CHECK_LABEL]},"
            f"{RUN_ID_LABEL}={labels[RUN_ID_LABEL]}"
        )
        try:
            with self.api() as (api, cluster):
                job = self._create(api, cluster, spec, sink)
                follower = self.follower(
                    api,
                    job,
                    cluster,
                    sink,
                    containers=(RUN_CONTAINER,),
                    command_container=RUN_CONTAINER,
                    command_timeout_s=request.timeout_s,
                )
                outcome = follower.follow()
                return self._result(api, cluster, spec, outcome, follower, sink)
        except KubernetesError as exc:
            raise RunError(f"run in {request.image}: {exc}") from exc
        except Exception:
            raise
        except BaseException:
            sink(f"{LOG_PREFIX}interrupted: deleting the check Jobs of this run ({mine})")
            self.cancel(mine, sink)
            raise

    def _create(self, api: ApiClient, cluster: str, spec: RunJobSpec, sink: LineSink) -> dict[str, Any]:
        """Create the check Job; one of the same name (a retried step) is followed while it runs, replaced
        once it finished."""
        from kubernetes.client import BatchV1Api

        batch = BatchV1Api(api)
        manifest = run_job_manifest(spec)
        what = f'Job "{spec.job_name}" in namespace "{spec.namespace}" of {cluster}'
        for _ in range(20):
            try:
                job = self.create_job(api, manifest, cluster)
                gpus = f" with {spec.gpus} GPU" if spec.gpus else ""
                sink(
                    f"{LOG_PREFIX}created {spec.check} check Job {spec.namespace}/{spec.job_name}{gpus} "
                    f"in {cluster}"
                )
                return job
            except KubernetesError as exc:
                if exc.status != 409:
                    raise
            current = _call(
                lambda: batch.read_namespaced_job(spec.job_name, spec.namespace, **self._options()),
                what,
                missing_ok=True,
            )
            if current is None or current["metadata"].get("deletionTimestamp"):
                time.sleep(0.2)
                continue
            if _finished(current) is None:
                sink(f"{LOG_PREFIX}following the running check Job {spec.namespace}/{spec.job_name}")
                return current
            sink(
                f"{LOG_PREFIX}replacing the finished check Job {spec.namespace}/{spec.job_name} "
                "of an earlier try"
            )
            self.delete_job(api, spec.namespace, spec.job_name, cluster)
        raise KubernetesError(f"{what}: still there after deleting it", 409)

    def _result(
        self,
        api: ApiClient,
        cluster: str,
        spec: RunJobSpec,
        outcome: JobOutcome,
        follower: JobFollower,
        sink: LineSink,
    ) -> RunResult:
        namespace, job_name = spec.namespace, spec.job_name
        lines = list(follower.container_lines.get(RUN_CONTAINER, []))
        earlier = f" Earlier pods: {'; '.join(outcome.earlier)}." if outcome.earlier else ""
        if outcome.status in ("timed_out", "stuck"):
            with contextlib.suppress(KubernetesError):
                self.delete_job(api, namespace, job_name, cluster)
        if outcome.status == "timed_out":
            sink(f"{LOG_PREFIX}check Job {namespace}/{job_name} {outcome.reason}: deleted")
            lines.append(f"{LOG_PREFIX}timed out after {spec.timeout_s:g} s")
            return RunResult(returncode=124, output="".join(f"{line}\n" for line in lines))
        if outcome.status == "stuck":
            raise RunError(
                f"the {spec.check} check of {spec.image} never started (Job {namespace}/{job_name}, "
                f"deleted): {outcome.reason}.{earlier}"
            )
        state = ((_container_status(outcome.pod, RUN_CONTAINER) or {}).get("state") or {}).get("terminated")
        if state is None or outcome.status in ("deleted", "lost"):
            pod = describe_pod(outcome.pod) if outcome.pod is not None else "no pod ran"
            raise RunError(
                f"the {spec.check} check of {spec.image} did not run to its end (Job {namespace}/{job_name}: "
                f"{outcome.reason}): {pod}; {_kept(namespace, job_name)}.{earlier}"
            )
        code = int(state.get("exitCode", 1))
        if not lines and state.get("message"):
            lines = state["message"].splitlines()
        if state.get("reason") == "OOMKilled":
            lines.append(f"{LOG_PREFIX}{describe_pod(outcome.pod or {})}")
        if code == 0:
            with contextlib.suppress(KubernetesError):
                self.delete_job(api, namespace, job_name, cluster)
        else:
            sink(f"{LOG_PREFIX}check exited {code}; {_kept(namespace, job_name)}")
        return RunResult(returncode=code, output="".join(f"{line}\n" for line in lines))
