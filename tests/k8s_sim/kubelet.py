"""The kubelet stand-in: runs the pods bound to the simulated nodes, with scripted outcomes, logs and faults.

Lifecycle (https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/), for each pod bound to a node
that is up:

1. The pod gets its IP (from the node's podCIDR), `hostIP`, `startTime`, condition
   PodReadyToStartContainers=True once its "sandbox" exists, and containers waiting `ContainerCreating`
   (main containers wait `PodInitializing` while init containers run). Volumes wait for their PVC to be
   Bound and for Secrets/ConfigMaps (not optional) to exist, with a `FailedMount` Event, as the kubelet's.
2. Init containers run one after the other (Initialized=False `ContainersNotInitialized` meanwhile); a
   sidecar (init container with restartPolicy Always) starts and keeps running beside the main containers.
3. Main containers run together: state `running` (startedAt, containerID `containerd://…`, imageID,
   `started: true`), `ready` once running (after `initialDelaySeconds` when a readinessProbe is set; probes
   are not executed), then `terminated` with exitCode, reason `Completed`/`Error`/`OOMKilled`, and the
   termination message: the content of the container's `terminationMessagePath` (scripted, or written by a
   hook), else with `terminationMessagePolicy: FallbackToLogsOnError` and a failure the last 80 lines /
   2048 bytes of its log (https://kubernetes.io/docs/tasks/debug/debug-application/determine-reason-pod-failure/).
4. Phase: Pending until the containers started; Running; Succeeded when all exited 0; Failed when one
   failed and the restartPolicy does not restart it. With restartPolicy OnFailure/Always a failed container
   restarts after a `CrashLoopBackOff` wait (10 s doubling to 300 s in the real kubelet; the base is the
   simulator's `--restart-backoff-seconds`), counting `restartCount` and keeping `lastState`. Conditions
   Initialized, ContainersReady and Ready follow (reason `PodCompleted` once Succeeded). Events: Pulled,
   Created, Started (and Pulling/Failed/BackOff for pull failures), from component `kubelet`.
5. A pod being deleted (graceful deletion) has its containers stopped (simulated ones at once with exit 137;
   a hook's process gets SIGTERM, then SIGKILL after the grace period), gets its terminal phase, and leaves
   the store. `spec.activeDeadlineSeconds` fails the pod with reason `DeadlineExceeded`.

**Scripted outcomes.** What each container does is a *script*; for a pod the first of these applies:

- a rule registered through the control endpoint `POST /_sim/scripts` (`Kubelet.add_rule`): pods matching
  its `namespace`, `selector` (a label selector), `namePrefix` and/or `image` (a regular expression that
  one of the pod's container images matches, re.search) take its `outcomes` in order, one
  outcome per pod (the last one repeats when `repeat` is true, the default), e.g. "fail, then succeed" for
  the successive pods of a Job;
- the pod's annotation `sim.k8s.test/script` (JSON; set it on a pod template);
- otherwise: containers of pods with restartPolicy Never/OnFailure exit 0 after `DEFAULT_DURATION_S`,
  containers of restartPolicy Always pods run until deleted.

A script is `{"containers": {"<name>" | "*": <container script>}, "evictAfterSeconds": s,
"evictionMessage": m}`
(or a bare container script, meaning `{"containers": {"*": ...}}`); `*` covers main containers not named;
unnamed init containers succeed at once. A container script has:
`exitCode` (0), `durationSeconds` (run time; null: forever), `logs` (lines, written evenly over the run),
`terminationMessage`, `ready` (false: never ready), `readyAfterSeconds`, and `fault`:
`"ErrImagePull"` (the pull fails: waiting `ErrImagePull`, then `ImagePullBackOff` for good; the pod stays
Pending, its `message` optional), or `"OOMKilled"` (terminated, reason `OOMKilled`, exit code 137, after
`durationSeconds`). `evictAfterSeconds` makes the kubelet evict the pod (node-pressure eviction:
https://kubernetes.io/docs/concepts/scheduling-eviction/node-pressure-eviction/): containers killed (exit
137), phase Failed, `reason: Evicted`, the message, and condition DisruptionTarget=True reason
`TerminationByKubelet`; `POST /_sim/pods/<ns>/<name>/evict` does it on demand.

**The exec hook** (`POST /_sim/hooks`, or `--hooks FILE`): a container whose image matches a hook's `image`
regular expression (re.search; and its `container` name, when given) is carried out by a local command
instead of a script: `hook.command + container.command + container.args`, with the environment of the
simulator, then the container's `env` (values, and valueFrom secretKeyRef/configMapKeyRef/fieldRef resolved
from the store), then the hook's `env`, then:

- `SIM_POD_FILE` (the pod as JSON), `SIM_NAMESPACE`, `SIM_POD_NAME`, `SIM_CONTAINER_NAME`, `SIM_NODE_NAME`,
  `SIM_API_URL` (the simulator, to read Secrets or ConfigMaps the container mounts),
  `SIM_WORKDIR` (its working directory, a fresh temporary directory removed afterwards),
- `SIM_TERMINATION_MESSAGE_PATH`: a file standing for the container's terminationMessagePath, read as the
  termination message when the command ends; in the argv, the container's terminationMessagePath itself
  (e.g. `--metadata-file /dev/termination-log`) is replaced by this path;
- `SIM_MOUNTS`: JSON `{mountPath: local directory}` for the container's volumeMounts, and `SIM_VOLUMES_DIR`,
  the pod's volumes as local directories shared by its hooked containers: an emptyDir is an empty
  directory (what an init container's hook writes there, the next container's hook reads), a Secret,
  ConfigMap or projected volume holds its keys as files (e.g. the Docker config of a registry Secret);
- with `rewritePaths` (the default), the container's mountPaths in its argv and env values are replaced by
  those local directories where they stand as a path (`--local context=/workspace/context`,
  `DOCKER_CONFIG=/home/user/.docker`), so that the command sees the files the container would.

Its stdout and stderr, line by line, are the container's log as they come (so `follow` streams them); its
exit status is the exit code (killed by signal N: 128+N); a command that cannot start fails the container
with reason `StartError`, exit code 128. This is how a test carries out a build Job with the local builder:
a hook for the BuildKit image reads the buildctl arguments (context, build args, target, output name), builds
and pushes with the local builder, and writes `{"containerimage.digest": "sha256:…"}` to
`$SIM_TERMINATION_MESSAGE_PATH`.

Simplified: probes are not run (readiness is scripted), no resource enforcement (OOMKilled only when
scripted), no image pulls (an image is "already present" unless the script says the pull fails), pull
failures do not alternate between ErrImagePull and ImagePullBackOff, volumes are not materialized for
scripted containers, logs vanish with their pod, `previous=true` logs are kept for restarted containers only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from tests.k8s_sim.resources import find
from tests.k8s_sim.runtime import NODES, PODS, PVCS, Component, set_condition
from tests.k8s_sim.selectors import label_selector
from tests.k8s_sim.store import now

SCRIPT_ANNOTATION = "sim.k8s.test/script"
DEFAULT_DURATION_S = 0.1
TERMINATION_LOG_LINES = 80
TERMINATION_LOG_BYTES = 2048
TERMINATION_MESSAGE_BYTES = 4096
DEFAULT_EVICTION_MESSAGE = (
    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 62Mi. "
)
SECRETS = find("", "v1", "secrets")
CONFIGMAPS = find("", "v1", "configmaps")


def normalize_image(image: str) -> str:
    """The image as the container runtime reports it: docker.io/library/busybox:1.36."""
    name = image
    first = name.split("/")[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif not ("." in first or ":" in first or first == "localhost"):
        name = f"docker.io/{name}"
    last = name.rsplit("/", 1)[-1]
    if "@" not in name and ":" not in last:
        name += ":latest"
    return name


def image_id(image: str) -> str:
    name = normalize_image(image)
    if "@" in name:
        repo, digest = name.split("@", 1)
        return f"{repo.rsplit(':', 1)[0] if ':' in repo.rsplit('/', 1)[-1] else repo}@{digest}"
    repo = name.rsplit(":", 1)[0]
    return f"{repo}@sha256:{hashlib.sha256(name.encode()).hexdigest()}"


def _container_id() -> str:
    return "containerd://" + os.urandom(32).hex()


# -- logs -------------------------------------------------------------------------------------------------


class ContainerLog:
    """One run of a container's log: (time, line) pairs, and whether the container has stopped."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []
        self.finished = False
        self._changed = asyncio.Event()

    def append(self, line: str) -> None:
        self.lines.append((time.time(), line))
        self._signal()

    def finish(self) -> None:
        self.finished = True
        self._signal()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, seen: int, timeout: float | None = None) -> None:
        """Until there are more than `seen` lines or the container stopped."""
        if len(self.lines) > seen or self.finished:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def text(self) -> str:
        return "".join(line + "\n" for _, line in self.lines)


# -- scripts ----------------------------------------------------------------------------------------------


@dataclass
class Rule:
    """A control-endpoint script rule."""

    id: int
    outcomes: list[dict[str, Any]]
    namespace: str | None = None
    selector: str | None = None
    name_prefix: str | None = None
    repeat: bool = True
    used: int = 0
    image: str | None = None

    def matches(self, pod: dict[str, Any]) -> bool:
        metadata = pod["metadata"]
        if self.image:
            spec = pod.get("spec") or {}
            images = [
                c.get("image") or ""
                for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
            ]
            if not any(re.search(self.image, image) for image in images):
                return False
        if self.namespace and metadata.get("namespace") != self.namespace:
            return False
        if self.name_prefix and not metadata["name"].startswith(self.name_prefix):
            return False
        if self.selector and not label_selector(self.selector)(metadata.get("labels") or {}):
            return False
        return self.used < len(self.outcomes) or (self.repeat and bool(self.outcomes))

    def take(self) -> dict[str, Any]:
        outcome = self.outcomes[min(self.used, len(self.outcomes) - 1)]
        self.used += 1
        return outcome

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "namespace": self.namespace,
            "selector": self.selector,
            "namePrefix": self.name_prefix,
            "image": self.image,
            "outcomes": self.outcomes,
            "repeat": self.repeat,
            "used": self.used,
        }


@dataclass
class Hook:
    id: int
    image: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    container: str | None = None
    rewrite_paths: bool = True

    def matches(self, container: dict[str, Any]) -> bool:
        if self.container and container.get("name") != self.container:
            return False
        return re.search(self.image, container.get("image") or "") is not None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "command": self.command,
            "env": self.env,
            "container": self.container,
            "rewritePaths": self.rewrite_paths,
        }


def _container_script(script: dict[str, Any], name: str, init: bool) -> dict[str, Any] | None:
    containers = script.get("containers")
    if containers is None:
        bare = {k: v for k, v in script.items() if k not in ("evictAfterSeconds", "evictionMessage")}
        containers = {"*": bare} if bare else {}
    if name in containers:
        return containers[name]
    if not init and "*" in containers:
        return containers["*"]
    return None


# -- the kubelet ------------------------------------------------------------------------------------------


class Kubelet(Component):
    interests = frozenset({"pods", "nodes", "persistentvolumeclaims", "secrets", "configmaps"})

    def __init__(self, runtime) -> None:
        super().__init__(runtime)
        self.workers: dict[str, PodWorker] = {}
        self.logs: dict[tuple[str, str], list[ContainerLog]] = {}
        self.rules: list[Rule] = []
        self.hooks: list[Hook] = []
        self._ids = 0
        self._ips: dict[str, int] = {}
        self._lost_workers: set[str] = set()

    # -- configuration (control endpoints) --

    def add_rule(self, spec: dict[str, Any]) -> Rule:
        outcomes = spec.get("outcomes")
        if outcomes is None and "outcome" in spec:
            outcomes = [spec["outcome"]]
        if not isinstance(outcomes, list) or not outcomes:
            raise ValueError("a script rule needs outcomes: a non-empty list of scripts")
        self._ids += 1
        rule = Rule(
            self._ids,
            outcomes,
            spec.get("namespace"),
            spec.get("selector"),
            spec.get("namePrefix"),
            bool(spec.get("repeat", True)),
            image=spec.get("image"),
        )
        if rule.image:
            re.compile(rule.image)  # 400 on a bad pattern
        if rule.selector:
            label_selector(rule.selector)  # 400 on a bad selector
        self.rules.append(rule)
        return rule

    def add_hook(self, spec: dict[str, Any]) -> Hook:
        command = spec.get("command")
        if not isinstance(command, list) or not command or not spec.get("image"):
            raise ValueError("a hook needs an image pattern and a command (a non-empty list)")
        re.compile(spec["image"])
        self._ids += 1
        hook = Hook(
            self._ids,
            spec["image"],
            [str(c) for c in command],
            dict(spec.get("env") or {}),
            spec.get("container"),
            bool(spec.get("rewritePaths", True)),
        )
        self.hooks.append(hook)
        return hook

    def script_for(self, pod: dict[str, Any]) -> dict[str, Any]:
        for rule in self.rules:
            if rule.matches(pod):
                return rule.take()
        annotation = (pod["metadata"].get("annotations") or {}).get(SCRIPT_ANNOTATION)
        if annotation:
            try:
                script = json.loads(annotation)
            except ValueError:
                script = None
            if isinstance(script, dict):
                return script
        return {}

    def hook_for(self, container: dict[str, Any]) -> Hook | None:
        for hook in self.hooks:
            if hook.matches(container):
                return hook
        return None

    # -- logs --

    def log(self, uid: str, container: str, previous: bool = False) -> ContainerLog | None:
        runs = self.logs.get((uid, container)) or []
        if previous:
            return runs[-2] if len(runs) > 1 else None
        return runs[-1] if runs else None

    def new_log(self, uid: str, container: str) -> ContainerLog:
        log = ContainerLog()
        self.logs.setdefault((uid, container), []).append(log)
        return log

    # -- pod IPs --

    def pod_ip(self, node: dict[str, Any]) -> str:
        cidr = (node.get("spec") or {}).get("podCIDR") or "10.244.0.0/24"
        network = ipaddress.ip_network(cidr)
        name = node["metadata"]["name"]
        self._ips[name] = self._ips.get(name, 1) + 1
        return str(network[self._ips[name] % (network.num_addresses - 2) + 1])

    # -- the sync loop --

    def sync(self) -> None:
        live: set[str] = set()
        for pod in self.store.iter(PODS):
            spec = pod.get("spec") or {}
            node_name = spec.get("nodeName")
            if not node_name:
                continue
            uid = pod["metadata"]["uid"]
            live.add(uid)
            if self.runtime.nodes.is_lost(node_name):
                worker = self.workers.pop(uid, None)
                if worker is not None:
                    worker.abandon()
                    self._lost_workers.add(uid)
                continue
            worker = self.workers.get(uid)
            deleting = bool(pod["metadata"].get("deletionTimestamp"))
            if worker is None:
                phase = (pod.get("status") or {}).get("phase")
                if deleting:
                    self.store.finish_deletion(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
                    continue
                if phase in ("Succeeded", "Failed"):
                    continue
                if self.store.peek(NODES, "", node_name) is None:
                    continue  # PodGC deals with pods of nodes that do not exist
                worker = PodWorker(self, pod, restarted=uid in self._lost_workers)
                self._lost_workers.discard(uid)
                self.workers[uid] = worker
                worker.start()
            elif deleting:
                worker.request_termination(pod)
            else:
                worker.poke()
        for uid in list(self.workers):
            if uid not in live:
                self.workers.pop(uid).abandon()
        for key in list(self.logs):
            if key[0] not in live:
                for log in self.logs.pop(key):
                    log.finish()
        self._lost_workers &= live

    async def stop(self) -> None:
        for worker in list(self.workers.values()):
            worker.abandon()
        self.workers.clear()

    def evict(self, namespace: str, name: str, message: str | None = None) -> bool:
        pod = self.store.peek(PODS, namespace, name)
        if pod is None:
            return False
        worker = self.workers.get(pod["metadata"]["uid"])
        if worker is None:
            return False
        worker.evict(message or DEFAULT_EVICTION_MESSAGE)
        return True


# -- one pod ----------------------------------------------------------------------------------------------


@dataclass
class ContainerState:
    spec: dict[str, Any]
    init: bool
    sidecar: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    last_state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    started: bool | None = False
    restarts: int = 0
    container_id: str | None = None
    process: asyncio.subprocess.Process | None = None

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def terminated(self) -> dict[str, Any] | None:
        return self.state.get("terminated")

    def status(self) -> dict[str, Any]:
        image = self.spec.get("image", "")
        status: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "restartCount": self.restarts,
            "image": normalize_image(image),
            "imageID": image_id(image) if self.container_id else "",
        }
        if self.container_id:
            status["containerID"] = self.container_id
        if self.started is not None:
            status["started"] = self.started
        return status


class PodWorker:
    def __init__(self, kubelet: Kubelet, pod: dict[str, Any], restarted: bool = False) -> None:
        self.kubelet = kubelet
        self.runtime = kubelet.runtime
        self.store = kubelet.store
        self.namespace = pod["metadata"]["namespace"]
        self.name = pod["metadata"]["name"]
        self.uid = pod["metadata"]["uid"]
        self.spec = pod["spec"]
        self.node_name = self.spec["nodeName"]
        self.restart_policy = self.spec.get("restartPolicy", "Always")
        self.restarted = restarted
        self.script: dict[str, Any] = {}
        init = self.spec.get("initContainers") or []
        self.init = [ContainerState(c, True, sidecar=c.get("restartPolicy") == "Always") for c in init]
        self.main = [ContainerState(c, False) for c in self.spec.get("containers") or []]
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.sandbox = False
        self.initialized = not any(not c.sidecar for c in self.init)
        self.pod_ip: str | None = None
        self.host_ip: str | None = None
        self.start_time = now()
        self.extra_conditions: list[dict[str, Any]] = []
        self.task: asyncio.Task | None = None
        self._children: list[asyncio.Future] = []
        self.volume_root: str | None = None
        self.terminating: float | None = None
        self._stop = asyncio.Event()
        self._poke = asyncio.Event()
        self._done = False

    # -- control --

    def _spawn(self, awaitable) -> asyncio.Future:
        """A child task, cancelled with the pod's own."""
        future = asyncio.ensure_future(awaitable)
        self._children = [c for c in self._children if not c.done()]
        self._children.append(future)
        return future

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def poke(self) -> None:
        self._poke.set()

    def request_termination(self, pod: dict[str, Any]) -> None:
        if self.terminating is None:
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            self.terminating = float(grace if grace is not None else 30)
            self._stop.set()
            self._poke.set()

    def abandon(self) -> None:
        """Stop without writing anything (the pod is gone, or its node is)."""
        self._done = True
        if self.task is not None:
            self.task.cancel()
        for container in self.init + self.main:
            self._kill(container, signal.SIGKILL)
        self._drop_volumes()

    # -- volumes for hooks --

    def _volumes_dir(self) -> str:
        """The pod's volumes as local directories (made when a hooked container first needs them): an
        emptyDir (or any other kind) is an empty directory shared by the pod's containers; a Secret, a
        ConfigMap or a projected volume of them holds their keys as files (`items` honoured)."""
        if self.volume_root is not None:
            return self.volume_root
        self.volume_root = tempfile.mkdtemp(prefix=f"k8s-sim-volumes-{self.name}-")
        for volume in self.spec.get("volumes") or []:
            path = os.path.join(self.volume_root, volume["name"])
            os.makedirs(path, exist_ok=True)
            sources = []
            if "secret" in volume:
                sources.append(
                    ("secret", volume["secret"].get("secretName", ""), volume["secret"].get("items"))
                )
            if "configMap" in volume:
                sources.append(
                    ("configMap", volume["configMap"].get("name", ""), volume["configMap"].get("items"))
                )
            for source in (volume.get("projected") or {}).get("sources") or []:
                for kind in ("secret", "configMap"):
                    if kind in source:
                        sources.append((kind, source[kind].get("name", ""), source[kind].get("items")))
            for kind, name, items in sources:
                self._write_keys(path, kind, name, items)
        return self.volume_root

    def _write_keys(self, path: str, kind: str, name: str, items: list[dict[str, Any]] | None) -> None:
        obj = self.store.peek(SECRETS if kind == "secret" else CONFIGMAPS, self.namespace, name) or {}
        values: dict[str, bytes] = {}
        for key, value in (obj.get("data") or {}).items():
            values[key] = base64.b64decode(value) if kind == "secret" else str(value).encode()
        for key, value in (obj.get("binaryData") or {}).items():
            values[key] = base64.b64decode(value)
        wanted = [(item.get("key", ""), item.get("path", "")) for item in items or []] or [
            (k, k) for k in values
        ]
        for key, target in wanted:
            if key not in values or not target:
                continue
            destination = os.path.join(path, target)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            with open(destination, "wb") as handle:
                handle.write(values[key])

    def _mounts(self, container: ContainerState) -> dict[str, str]:
        root = self._volumes_dir()
        return {
            mount["mountPath"]: os.path.join(root, mount["name"], mount.get("subPath") or "").rstrip("/")
            for mount in container.spec.get("volumeMounts") or []
        }

    def _drop_volumes(self) -> None:
        if self.volume_root is not None:
            shutil.rmtree(self.volume_root, ignore_errors=True)
            self.volume_root = None

    def evict(self, message: str) -> None:
        if self.phase in ("Succeeded", "Failed") or self._done:
            return
        self.reason, self.message = "Evicted", message
        set_condition(
            self.extra_conditions, "DisruptionTarget", "True", "TerminationByKubelet", message, probe="null"
        )
        self._stop.set()
        self._poke.set()

    # -- status --

    def _conditions(self) -> list[dict[str, Any]]:
        pod = self.store.peek(PODS, self.namespace, self.name)
        existing = [dict(c) for c in ((pod or {}).get("status") or {}).get("conditions") or []]
        mine = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")
        conditions = [c for c in existing if c["type"] in mine]
        others = [
            c
            for c in existing
            if c["type"] not in mine and c["type"] not in {e["type"] for e in self.extra_conditions}
        ]
        completed = self.phase == "Succeeded"
        set_condition(
            conditions,
            "PodReadyToStartContainers",
            "True" if self.sandbox and self.phase not in ("Succeeded", "Failed") else "False",
            probe="null",
        )
        waiting_init = [
            c.name
            for c in self.init
            if not c.sidecar and not (c.terminated and c.terminated.get("exitCode") == 0)
        ]
        if completed:
            set_condition(conditions, "Initialized", "True", "PodCompleted", probe="null")
        elif self.initialized or not waiting_init:
            set_condition(conditions, "Initialized", "True", probe="null")
        else:
            set_condition(
                conditions,
                "Initialized",
                "False",
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(waiting_init)}]",
                probe="null",
            )
        unready = [c.name for c in self.main + [s for s in self.init if s.sidecar] if not c.ready]
        for kind in ("Ready", "ContainersReady"):
            if completed:
                set_condition(conditions, kind, "False", "PodCompleted", probe="null")
            elif unready:
                set_condition(
                    conditions,
                    kind,
                    "False",
                    "ContainersNotReady",
                    f"containers with unready status: [{' '.join(unready)}]",
                    probe="null",
                )
            else:
                set_condition(conditions, kind, "True", probe="null")
        order = {kind: index for index, kind in enumerate(mine)}
        conditions.sort(key=lambda c: order[c["type"]])
        return conditions + others + [dict(c) for c in self.extra_conditions]

    def publish(self) -> dict[str, Any] | None:
        if self._done:
            return None
        pod = self.store.peek(PODS, self.namespace, self.name)
        if pod is None or pod["metadata"]["uid"] != self.uid:
            self._done = True
            return None
        status = dict(pod.get("status") or {})
        status["phase"] = self.phase
        status["conditions"] = self._conditions()
        for key, value in (("reason", self.reason), ("message", self.message)):
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        if self.host_ip:
            status["hostIP"] = self.host_ip
            status["hostIPs"] = [{"ip": self.host_ip}]
        if self.pod_ip:
            status["podIP"] = self.pod_ip
            status["podIPs"] = [{"ip": self.pod_ip}]
        status["startTime"] = self.start_time
        if self.init:
            status["initContainerStatuses"] = [c.status() for c in self.init]
        status["containerStatuses"] = [c.status() for c in self.main]
        return self.runtime.write_status(PODS, pod, status)

    def event(
        self, event_type: str, reason: str, message: str, container: ContainerState | None = None
    ) -> None:
        pod = self.store.peek(PODS, self.namespace, self.name)
        if pod is None:
            return
        field_path = None
        if container is not None:
            field_path = f"spec.{'initContainers' if container.init else 'containers'}{{{container.name}}}"
        self.runtime.record(
            pod, event_type, reason, message, "kubelet", host=self.node_name, field_path=field_path
        )

    # -- running --

    async def _sleep(self, seconds: float | None) -> bool:
        """Sleep unless asked to stop; True when asked to stop."""
        if self._stop.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _run(self) -> None:
        try:
            await self._lifecycle()
        except asyncio.CancelledError:
            raise
        except Exception:
            import traceback

            traceback.print_exc()
        finally:
            for child in self._children:
                child.cancel()
            for container in self.init + self.main:
                log = self.kubelet.log(self.uid, container.name)
                if log is not None and container.terminated is not None:
                    log.finish()

    async def _lifecycle(self) -> None:
        pod = self.store.peek(PODS, self.namespace, self.name)
        if pod is None:
            return
        self.script = self.kubelet.script_for(pod)
        node = self.store.peek(NODES, "", self.node_name) or {}
        for address in (node.get("status") or {}).get("addresses") or []:
            if address.get("type") == "InternalIP":
                self.host_ip = address.get("address")
        for container in self.main:
            container.state = {"waiting": {"reason": "PodInitializing" if self.init else "ContainerCreating"}}
        for container in self.init:
            container.state = {"waiting": {"reason": "PodInitializing"}}
        if self.restarted and self.restart_policy == "Never":
            # The node came back without the containers (a reboot): their state cannot be known.
            for container in self.init + self.main:
                if not container.terminated:
                    container.state = {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "ContainerStatusUnknown",
                            "message": "The container could not be located when the pod was terminated",
                            "startedAt": None,
                            "finishedAt": now(),
                        }
                    }
            self.phase = "Failed"
            self.publish()
            return
        self.publish()
        deadline = self.spec.get("activeDeadlineSeconds")
        if deadline is not None:
            asyncio.get_running_loop().call_later(float(deadline), self._deadline)
        evict_after = self.script.get("evictAfterSeconds")
        if evict_after is not None:
            asyncio.get_running_loop().call_later(
                float(evict_after), self.evict, self.script.get("evictionMessage") or DEFAULT_EVICTION_MESSAGE
            )
        if not await self._volumes_ready():
            await self._finish()
            return
        if await self._sleep(self.runtime.kubelet_step_s):
            await self._finish()
            return
        self.sandbox = True
        self.pod_ip = self.kubelet.pod_ip(node) if node else None
        self.publish()
        sidecars: list[asyncio.Task] = []
        for container in self.init:
            if container.sidecar:
                sidecars.append(self._spawn(self._keep_running(container)))
                while not container.started and not self._stop.is_set():
                    await self._sleep(self.runtime.kubelet_step_s)
                continue
            ok = await self._run_until_done(container)
            if not ok:
                await self._finish(sidecars)
                return
        self.initialized = True
        for container in self.main:
            container.state = {"waiting": {"reason": "ContainerCreating"}}
        self.publish()
        mains = [self._spawn(self._keep_running(c)) for c in self.main]
        stop_wait = self._spawn(self._stop.wait())
        await asyncio.wait([*mains, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        while not all(m.done() for m in mains) and not self._stop.is_set():
            await asyncio.wait([*mains, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        await self._finish(sidecars + mains)

    def _deadline(self) -> None:
        if self.phase in ("Succeeded", "Failed") or self._done:
            return
        self.reason = "DeadlineExceeded"
        self.message = "Pod was active on the node longer than the specified deadline"
        self._stop.set()
        self._poke.set()

    async def _volumes_ready(self) -> bool:
        reported: set[str] = set()
        while True:
            missing = []
            for volume in self.spec.get("volumes") or []:
                problem = self._volume_problem(volume)
                if problem:
                    missing.append((volume.get("name", ""), problem))
            if not missing:
                return True
            for name, problem in missing:
                if name not in reported:
                    reported.add(name)
                    self.event(
                        "Warning", "FailedMount", f'MountVolume.SetUp failed for volume "{name}" : {problem}'
                    )
            self._poke.clear()
            if self._stop.is_set():
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), 1.0)

    def _volume_problem(self, volume: dict[str, Any]) -> str | None:
        if "persistentVolumeClaim" in volume:
            claim = self.store.peek(
                PVCS, self.namespace, volume["persistentVolumeClaim"].get("claimName", "")
            )
            if claim is None or (claim.get("status") or {}).get("phase") != "Bound":
                return "PVC is not bound"
        for source, name_key, resource, noun in (
            ("secret", "secretName", SECRETS, "secret"),
            ("configMap", "name", CONFIGMAPS, "configmap"),
        ):
            if source in volume:
                ref = volume[source]
                name = ref.get(name_key, "")
                if not ref.get("optional") and self.store.peek(resource, self.namespace, name) is None:
                    return f'{noun} "{name}" not found'
        return None

    def _crash_loop_back_off(self, container: ContainerState, attempt: int) -> float:
        """A failed container waits in CrashLoopBackOff before its restart number `attempt` (its last run
        kept as its last state): the delay, the base doubling from the first restart, at most 5 min."""
        delay = min(self.runtime.restart_backoff_base_s * 2 ** (attempt - 1), 300.0)
        container.last_state = {"terminated": container.terminated} if container.terminated else {}
        container.restarts += 1
        container.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {int(delay)}s restarting failed container={container.name} "
                f"pod={self.name}_{self.namespace}({self.uid})",
            }
        }
        return delay

    async def _keep_running(self, container: ContainerState) -> None:
        """Run a container, restarting it per the restartPolicy (sidecars: always)."""
        attempt = 0
        while True:
            ok = await self._run_container(container)
            policy = "Always" if container.sidecar else self.restart_policy
            if self._stop.is_set() or container.state.get("waiting"):
                return
            if policy == "Never" or (policy == "OnFailure" and ok):
                return
            if not container.sidecar and policy == "Always" and ok and not self.main:
                return
            attempt += 1
            delay = self._crash_loop_back_off(container, attempt)
            container.started = False
            self.publish()
            self.event(
                "Warning",
                "BackOff",
                "Back-off restarting failed container "
                f"{container.name} in pod {self.name}_{self.namespace}({self.uid})",
                container,
            )
            if await self._sleep(delay):
                return

    async def _run_until_done(self, container: ContainerState) -> bool:
        """An init container: run until it succeeds (restarting it unless restartPolicy is Never)."""
        attempt = 0
        while True:
            ok = await self._run_container(container)
            if ok:
                return True
            if self._stop.is_set() or self.restart_policy == "Never" or container.state.get("waiting"):
                return False
            attempt += 1
            delay = self._crash_loop_back_off(container, attempt)
            self.publish()
            if await self._sleep(delay):
                return False

    async def _run_container(self, container: ContainerState) -> bool:
        """One run of a container; True when it exited 0 (a pull failure never returns until stopped)."""
        script = _container_script(self.script, container.name, container.init) or {}
        image = container.spec.get("image", "")
        if script.get("fault") == "ErrImagePull":
            await self._pull_failure(container, script)
            return False
        hook = self.kubelet.hook_for(container.spec)
        if container.restarts == 0 and container.container_id is None:
            self.event("Normal", "Pulled", f'Container image "{image}" already present on machine', container)
        container.container_id = _container_id()
        log = self.kubelet.new_log(self.uid, container.name)
        self.event("Normal", "Created", f"Created container: {container.name}", container)
        started = now()
        container.state = {"running": {"startedAt": started}}
        container.started = True
        self.phase = self._phase()
        self.publish()
        self.event("Normal", "Started", f"Started container {container.name}", container)
        readiness = self._spawn(self._become_ready(container, script))
        try:
            if hook is not None:
                exit_code, reason, message = await self._run_hook(container, hook, log)
            else:
                exit_code, reason, message = await self._run_script(container, script, log)
        finally:
            readiness.cancel()
        container.ready = container.init and exit_code == 0
        container.started = False
        if (
            message is None
            and container.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
            and exit_code != 0
        ):
            message = _log_tail(log)
        terminated: dict[str, Any] = {"exitCode": exit_code, "reason": reason}
        if message:
            terminated["message"] = message
        terminated.update(startedAt=started, finishedAt=now(), containerID=container.container_id)
        container.state = {"terminated": terminated}
        log.finish()
        self.phase = self._phase()
        self.publish()
        return exit_code == 0

    async def _become_ready(self, container: ContainerState, script: dict[str, Any]) -> None:
        if script.get("ready") is False or (container.init and not container.sidecar):
            return
        delay = float(script.get("readyAfterSeconds") or 0)
        probe = container.spec.get("readinessProbe")
        if probe:
            delay = max(delay, float(probe.get("initialDelaySeconds") or 0))
        if delay:
            await asyncio.sleep(delay)
        if container.state.get("running"):
            container.ready = True
            self.publish()

    async def _run_script(self, container: ContainerState, script: dict[str, Any], log: ContainerLog):
        lines = [str(line) for line in script.get("logs") or []]
        default = DEFAULT_DURATION_S if self.restart_policy != "Always" or container.init else None
        if container.init and not container.sidecar and not script:
            default = self.runtime.kubelet_step_s
        duration = script.get("durationSeconds", default)
        exit_code = int(script.get("exitCode", 0))
        if script.get("fault") == "OOMKilled":
            exit_code = 137
        if duration is None:
            for line in lines:
                log.append(line)
            await self._sleep(None)
            return 137, "Error", None
        duration = float(duration)
        begin = time.monotonic()
        for index, line in enumerate(lines):
            due = begin + duration * index / max(len(lines), 1)
            if await self._sleep(max(due - time.monotonic(), 0)):
                return 137, "Error", None
            log.append(line)
        if await self._sleep(max(begin + duration - time.monotonic(), 0)):
            return 137, "Error", None
        if script.get("fault") == "OOMKilled":
            reason = "OOMKilled"
        else:
            reason = "Completed" if exit_code == 0 else "Error"
        message = script.get("terminationMessage")
        return exit_code, reason, (message[:TERMINATION_MESSAGE_BYTES] if message else None)

    async def _pull_failure(self, container: ContainerState, script: dict[str, Any]) -> None:
        image = container.spec.get("image", "")
        full = normalize_image(image)
        detail = script.get("message") or (
            f'rpc error: code = NotFound desc = failed to pull and unpack image "{full}": failed to resolve '
            f'reference "{full}": {full}: not found'
        )
        self.event("Normal", "Pulling", f'Pulling image "{image}"', container)
        if await self._sleep(self.runtime.kubelet_step_s):
            return
        container.state = {"waiting": {"reason": "ErrImagePull", "message": detail}}
        self.phase = self._phase()
        self.publish()
        self.event("Warning", "Failed", f'Failed to pull image "{image}": {detail}', container)
        self.event("Warning", "Failed", "Error: ErrImagePull", container)
        if await self._sleep(max(self.runtime.kubelet_step_s * 10, 0.2)):
            return
        container.state = {
            "waiting": {
                "reason": "ImagePullBackOff",
                "message": f'Back-off pulling image "{image}": ErrImagePull: {detail}',
            }
        }
        self.publish()
        self.event("Normal", "BackOff", f'Back-off pulling image "{image}"', container)
        self.event("Warning", "Failed", "Error: ImagePullBackOff", container)
        await self._sleep(None)

    # -- the exec hook --

    def _env(self, container: ContainerState) -> dict[str, str]:
        env: dict[str, str] = {}
        pod = self.store.peek(PODS, self.namespace, self.name) or {}
        for item in container.spec.get("env") or []:
            name = item.get("name")
            if not name:
                continue
            if "value" in item:
                env[name] = str(item["value"])
                continue
            source = item.get("valueFrom") or {}
            value = None
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.store.peek(SECRETS, self.namespace, ref.get("name", "")) or {}
                raw = (secret.get("data") or {}).get(ref.get("key", ""))
                value = base64.b64decode(raw).decode(errors="replace") if raw is not None else None
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                config = self.store.peek(CONFIGMAPS, self.namespace, ref.get("name", "")) or {}
                value = (config.get("data") or {}).get(ref.get("key", ""))
            elif "fieldRef" in source:
                path = source["fieldRef"].get("fieldPath", "")
                value = {
                    "metadata.name": self.name,
                    "metadata.namespace": self.namespace,
                    "metadata.uid": self.uid,
                    "spec.nodeName": self.node_name,
                    "spec.serviceAccountName": self.spec.get("serviceAccountName"),
                    "status.podIP": self.pod_ip,
                    "status.hostIP": self.host_ip,
                }.get(path)
                if value is None and path.startswith("metadata.labels['"):
                    value = (pod.get("metadata", {}).get("labels") or {}).get(
                        path[len("metadata.labels['") : -2]
                    )
            if value is not None:
                env[name] = str(value)
        return env

    async def _run_hook(self, container: ContainerState, hook: Hook, log: ContainerLog):
        workdir = tempfile.mkdtemp(prefix=f"k8s-sim-{self.name}-{container.name}-")
        try:
            message_path = os.path.join(workdir, "termination-log")
            pod_file = os.path.join(workdir, "pod.json")
            pod = self.store.peek(PODS, self.namespace, self.name) or {}
            with open(pod_file, "w") as handle:
                json.dump(pod, handle)
            declared = container.spec.get("terminationMessagePath") or "/dev/termination-log"
            mounts = self._mounts(container)
            rewrite = _path_rewriter(
                {declared: message_path, **mounts} if hook.rewrite_paths else {declared: message_path}
            )
            argv = [
                *hook.command,
                *[rewrite(a) for a in container.spec.get("command") or []],
                *[rewrite(a) for a in container.spec.get("args") or []],
            ]
            env = {
                **os.environ,
                **{k: rewrite(v) for k, v in self._env(container).items()},
                **hook.env,
                "SIM_POD_FILE": pod_file,
                "SIM_NAMESPACE": self.namespace,
                "SIM_POD_NAME": self.name,
                "SIM_CONTAINER_NAME": container.name,
                "SIM_NODE_NAME": self.node_name,
                "SIM_API_URL": self.runtime.sim_url,
                "SIM_WORKDIR": workdir,
                "SIM_TERMINATION_MESSAGE_PATH": message_path,
                "SIM_VOLUMES_DIR": self._volumes_dir(),
                "SIM_MOUNTS": json.dumps(mounts),
            }
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=workdir,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                return (
                    128,
                    "StartError",
                    f"failed to create containerd task: failed to create shim task: exec: {exc}",
                )
            container.process = process
            killer = self._spawn(self._stop_process_on_request(container, process))
            assert process.stdout is not None
            while True:
                raw = await process.stdout.readline()
                if not raw:
                    break
                log.append(raw.decode(errors="replace").rstrip("\n"))
            code = await process.wait()
            killer.cancel()
            container.process = None
            exit_code = code if code >= 0 else 128 - code
            message = None
            with contextlib.suppress(OSError), open(message_path, "rb") as handle:
                message = handle.read(TERMINATION_MESSAGE_BYTES).decode(errors="replace") or None
            return exit_code, "Completed" if exit_code == 0 else "Error", message
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    async def _stop_process_on_request(
        self, container: ContainerState, process: asyncio.subprocess.Process
    ) -> None:
        await self._stop.wait()
        grace = self.terminating if self.terminating is not None else 0.0
        if self.reason == "Evicted":
            grace = 0.0
        if grace > 0:
            self._kill(container, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), grace)
        self._kill(container, signal.SIGKILL)

    @staticmethod
    def _kill(container: ContainerState, sig: int) -> None:
        process = container.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    # -- the end --

    def _phase(self) -> str:
        """The kubelet's getPhase, for this worker's containers."""
        regular = [c for c in self.init if not c.sidecar]
        if any(not c.terminated for c in regular) or any(
            c.terminated and c.terminated.get("exitCode") != 0 for c in regular
        ):
            failed_init = any(c.terminated and c.terminated.get("exitCode") != 0 for c in regular)
            if failed_init and self.restart_policy == "Never":
                return "Failed"
            return "Pending"
        running = sum(1 for c in self.main if c.state.get("running"))
        waiting = sum(1 for c in self.main if c.state.get("waiting"))
        terminated = [c for c in self.main if c.terminated]
        if waiting and not running and not terminated:
            return "Pending"
        if running or waiting:
            return "Running"
        if len(terminated) == len(self.main):
            failed = any(c.terminated.get("exitCode") != 0 for c in terminated)
            if self.restart_policy == "Always":
                return "Running"
            if self.restart_policy == "OnFailure" and failed:
                return "Running"
            return "Failed" if failed else "Succeeded"
        return "Pending"

    async def _finish(self, tasks: list[asyncio.Future] | None = None) -> None:
        """Stop what still runs, set the terminal phase, and end a requested deletion."""
        self._stop.set()
        for task in tasks or []:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), max((self.terminating or 0) + 1, 2))
        stamp = now()
        for container in self.init + self.main:
            if container.state.get("running"):
                container.state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "Error",
                        "startedAt": container.state["running"].get("startedAt"),
                        "finishedAt": stamp,
                        "containerID": container.container_id,
                    }
                }
                container.ready = False
                container.started = False
            log = self.kubelet.log(self.uid, container.name)
            if log is not None:
                log.finish()
        for container in self.main + self.init:
            container.ready = container.ready and container.init and not container.sidecar
        if self.reason in ("Evicted", "DeadlineExceeded"):
            self.phase = "Failed"
        else:
            phase = self._phase()
            if phase in ("Pending", "Running"):
                # Stopped before finishing (deleted): the kubelet sets a terminal phase from the exit codes.
                codes = [(c.terminated or {}).get("exitCode") for c in self.main]
                phase = "Succeeded" if codes and all(code == 0 for code in codes) else "Failed"
            self.phase = phase
        self.sandbox = False
        self.publish()
        self._drop_volumes()
        if self.terminating is not None and not self._done:
            self.store.finish_deletion(PODS, self.namespace, self.name)
            self._done = True


def _path_rewriter(paths: dict[str, str]):
    """Replace container paths (a mountPath, the terminationMessagePath) by their local directories where
    they stand as a path: a whole word, or after `=`, `:` or `,`, and followed by `/`, the end, `,` or `:`."""
    if not paths:
        return lambda text: text
    ordered = sorted(paths, key=len, reverse=True)
    pattern = re.compile(
        r"(?:(?<=^)|(?<=[=:,\s]))("
        + "|".join(re.escape(p.rstrip("/") or "/") for p in ordered)
        + r")(?=/|$|,|:|\s)"
    )

    def rewrite(text: str) -> str:
        return pattern.sub(lambda m: paths.get(m.group(1)) or paths.get(m.group(1) + "/", m.group(1)), text)

    return rewrite


def _log_tail(log: ContainerLog) -> str | None:
    lines = [line for _, line in log.lines[-TERMINATION_LOG_LINES:]]
    text = "\n".join(lines)
    if len(text.encode()) > TERMINATION_LOG_BYTES:
        text = text.encode()[-TERMINATION_LOG_BYTES:].decode(errors="replace")
    return text or None
