"""The simulated control plane and nodes: controllers, scheduler and kubelet run in the server's event loop.

`Runtime` owns the components and one loop (`run`) that wakes on store events (the same events watches
read) and on timers, and calls each interested component's `sync()`. Components are level-triggered, as
the real controllers are: `sync()` looks at the current objects and writes what differs, so an event
caused by a component's own write leads to a pass that writes nothing. They read the store directly and
write through it (`Store.create/replace/update_status/delete` with `trusted=True`), so every write gets a
resourceVersion and reaches watches as a client's write does.

Components (each module documents its behaviour and its simplifications):

- `scheduler.Scheduler`: kube-scheduler's filters and FailedScheduling message;
- `kubelet.Kubelet`: pod phases, container states, logs, scripted outcomes, faults, the exec hook;
- `controllers.jobs.JobController`, `controllers.workloads.*` (ReplicaSet, Deployment, DaemonSet,
  StatefulSet, PodDisruptionBudget status), `controllers.storage.VolumeBinder`, `controllers.gc`
  (garbage collector, TTL-after-finished, PodGC), `controllers.nodes.NodeLifecycle` (node loss, taint
  manager), `controllers.namespaces.NamespaceDefaults` (the `default` ServiceAccount, `kube-root-ca.crt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import sys
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tests.k8s_sim import errors
from tests.k8s_sim.resources import Resource, find
from tests.k8s_sim.store import Event, Store, now

if TYPE_CHECKING:
    from tests.k8s_sim.faults import Faults


def resource(group: str, plural: str) -> Resource:
    found = find(group, "v1", plural)
    assert found is not None, plural
    return found


PODS = resource("", "pods")
NODES = resource("", "nodes")
EVENTS = resource("", "events")
NAMESPACES = resource("", "namespaces")
PVCS = resource("", "persistentvolumeclaims")
PVS = resource("", "persistentvolumes")
JOBS = resource("batch", "jobs")
DEPLOYMENTS = resource("apps", "deployments")
REPLICASETS = resource("apps", "replicasets")
DAEMONSETS = resource("apps", "daemonsets")
STATEFULSETS = resource("apps", "statefulsets")
STORAGECLASSES = resource("storage.k8s.io", "storageclasses")


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def is_true(obj: dict[str, Any], kind: str) -> bool:
    cond = condition(obj, kind)
    return cond is not None and cond.get("status") == "True"


def set_condition(
    conditions: list[dict[str, Any]],
    kind: str,
    status: str,
    reason: str | None = None,
    message: str | None = None,
    *,
    probe: str = "omit",
    update_time: bool = False,
) -> list[dict[str, Any]]:
    """Set one condition in a list, keeping lastTransitionTime unless the status changes (the real
    helpers' rule). `probe`: "omit", "null" (Pods write `lastProbeTime: null`) or "now" (Jobs);
    `update_time` keeps a lastUpdateTime (Deployments: the caller refreshes it)."""
    stamp = now()
    for cond in conditions:
        if cond.get("type") != kind:
            continue
        if cond.get("status") != status:
            cond["lastTransitionTime"] = stamp
        cond["status"] = status
        for field, value in (("reason", reason), ("message", message)):
            if value is None:
                cond.pop(field, None)
            else:
                cond[field] = value
        return conditions
    new: dict[str, Any] = {"type": kind, "status": status}
    if probe != "omit":
        new["lastProbeTime"] = stamp if probe == "now" else None
    if update_time:
        new["lastUpdateTime"] = stamp
    new["lastTransitionTime"] = stamp
    if reason is not None:
        new["reason"] = reason
    if message is not None:
        new["message"] = message
    conditions.append(new)
    return conditions


def owner_reference(obj: dict[str, Any], controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def controller_uid(obj: dict[str, Any]) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def by_controller(objects: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The objects by the uid of their controller (the ownerReference with `controller: true`); those
    without one are left out."""
    owned: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for obj in objects:
        uid = controller_uid(obj)
        if uid:
            owned[uid].append(obj)
    return dict(owned)


class Component:
    """A controller: `interests` names the resources (plural) whose events make it run."""

    interests: frozenset[str] = frozenset()

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store = runtime.store

    def wants(self, event: Event) -> bool:
        return event.resource.plural in self.interests

    def sync(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def stop(self) -> None:
        return None


class Runtime:
    def __init__(
        self,
        store: Store,
        *,
        job_backoff_base_s: float = 10.0,
        restart_backoff_base_s: float = 10.0,
        kubelet_step_s: float = 0.02,
    ) -> None:
        self.store = store
        self.job_backoff_base_s = job_backoff_base_s
        """The Job controller's pod-recreation backoff after a failure (10 s, doubling, capped at 6 min)."""
        self.restart_backoff_base_s = restart_backoff_base_s
        """The kubelet's CrashLoopBackOff base (10 s, doubling, capped at 5 min)."""
        self.kubelet_step_s = kubelet_step_s
        """How long the kubelet stand-in takes for each step of a pod's start."""
        self._timers: list[float] = []
        self._task: asyncio.Task | None = None
        self._queue: asyncio.Queue | None = None
        self._timer_slots: set[float] = set()
        self._events: dict[tuple[str, str, str, str, str], str] = {}
        self._create_backoff: dict[str, tuple[int, float]] = {}
        self.faults: Faults | None = None
        """The API server's fault rules (app.Simulator sets them): those for controllers fail pod creates."""
        self.sim_url = ""
        from tests.k8s_sim.controllers import gc, jobs, namespaces, nodes, storage, workloads
        from tests.k8s_sim.kubelet import Kubelet
        from tests.k8s_sim.scheduler import Scheduler

        self.scheduler = Scheduler(self)
        self.kubelet = Kubelet(self)
        self.nodes = nodes.NodeLifecycle(self)
        self.components: list[Component] = [
            namespaces.NamespaceDefaults(self),
            self.nodes,
            storage.VolumeBinder(self),
            self.scheduler,
            self.kubelet,
            jobs.JobController(self),
            workloads.ReplicaSetController(self),
            workloads.DeploymentController(self),
            workloads.DaemonSetController(self),
            workloads.StatefulSetController(self),
            workloads.DisruptionController(self),
            gc.GarbageCollector(self),
            gc.TTLAfterFinished(self),
            gc.PodGC(self),
        ]

    # -- scheduling work ----------------------------------------------------------------------------------

    def wake_at(self, when: float) -> None:
        """Run every component again at `when` (time.time()); the same moment is kept once."""
        slot = round(when, 2)
        if slot in self._timer_slots:
            return
        self._timer_slots.add(slot)
        heapq.heappush(self._timers, slot)
        self.kick()

    def wake_in(self, seconds: float) -> None:
        self.wake_at(time.time() + max(seconds, 0.0))

    def kick(self) -> None:
        """Make the loop run every component soon (a sentinel in its event queue)."""
        if self._queue is not None:
            self._queue.put_nowait(None)

    def start(self) -> None:
        self._queue = self.store.subscribe()
        self._task = asyncio.get_running_loop().create_task(self.run())
        self._task.add_done_callback(_report_end)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for component in self.components:
            await component.stop()

    async def run(self) -> None:
        queue = self._queue
        assert queue is not None
        dirty: set[Component] = set(self.components)
        try:
            while True:
                self._pass(dirty)
                dirty = set()
                await asyncio.sleep(0)  # let requests and the kubelet's tasks in between passes
                self._drain(queue, dirty)
                if dirty:
                    continue
                timeout = max(self._timers[0] - time.time(), 0.0) if self._timers else None
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    pass
                else:
                    self._take(item, dirty)
                self._drain(queue, dirty)
        finally:
            self.store.unsubscribe(queue)

    def _drain(self, queue: asyncio.Queue, dirty: set[Component]) -> None:
        while not queue.empty():
            self._take(queue.get_nowait(), dirty)
        current = time.time()
        while self._timers and self._timers[0] <= current:
            self._timer_slots.discard(heapq.heappop(self._timers))
            dirty.update(self.components)

    def _take(self, event: Event | None, dirty: set[Component]) -> None:
        if event is None:
            dirty.update(self.components)
            return
        for component in self.components:
            if component not in dirty and component.wants(event):
                dirty.add(component)

    def _pass(self, dirty: set[Component]) -> None:
        for component in self.components:
            if component in dirty:
                try:
                    component.sync()
                except Exception:  # a component's bug must not stop the others
                    print(f"k8s-sim: {type(component).__name__}.sync failed", file=sys.stderr)
                    traceback.print_exc()

    # -- writing helpers ----------------------------------------------------------------------------------

    def create(self, res: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return self.store.create(res, namespace, body, trusted=True)[0]
        except errors.ApiError as exc:
            if exc.code != 409:  # a name still taken (a pod still terminating) is retried on a later pass
                print(f"k8s-sim: create {res.plural} {namespace}: {exc.message}", file=sys.stderr)
            return None

    def create_pod(
        self,
        owner: dict[str, Any],
        body: dict[str, Any],
        component: str,
        backoff: tuple[float, float],
        failed_message: Callable[[str], str] | None = None,
    ) -> dict[str, Any] | None:
        """A controller's pod create, as its POST meets the API server: fault rules for controllers
        (faults.py), then the create with its admission (store.py: the ServiceAccount must exist).

        Refused, it is what controller_utils' RealPodControl does: a Warning Event `FailedCreate` on the
        owner, "Error creating: <the API's message>" (`failed_message` words it otherwise: the StatefulSet
        controller's), and the owner's sync is due again after the controller's rate-limited backoff
        (`backoff`: base and cap in seconds, doubling with each failure in a row; `create_held` says
        whether it is still running); None. A name still taken (409, a pod still terminating) is left to a
        later pass, without an Event. The owner itself is not failed by it."""
        namespace = owner["metadata"]["namespace"]
        uid = owner["metadata"]["uid"]
        try:
            rule = (
                self.faults.match(f"/api/v1/namespaces/{namespace}/pods", "POST", "create", controller=True)
                if self.faults is not None
                else None
            )
            error = rule.error() if rule is not None else None
            if error is not None:
                raise error
            created = self.store.create(PODS, namespace, body, trusted=True)[0]
        except errors.ApiError as exc:
            if exc.code == 409:
                return None
            failures = self._create_backoff.get(uid, (0, 0.0))[0] + 1
            retry_at = time.time() + min(backoff[0] * 2 ** (failures - 1), backoff[1])
            self._create_backoff[uid] = (failures, retry_at)
            self.wake_at(retry_at)
            message = failed_message(exc.message) if failed_message else f"Error creating: {exc.message}"
            self.record(owner, "Warning", "FailedCreate", message, component)
            return None
        self._create_backoff.pop(uid, None)
        return created

    def create_held(self, owner: dict[str, Any]) -> bool:
        """Whether the owner's pod creates wait out the backoff of a refused create (its sync is due again
        when it ends)."""
        entry = self._create_backoff.get(owner["metadata"]["uid"])
        if entry is None or entry[1] <= time.time():
            return False
        self.wake_at(entry[1])
        return True

    def update(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Write an object (spec and metadata; status is kept), without a resourceVersion precondition."""
        body = dict(obj)
        body["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
        try:
            return self.store.replace(
                res, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], body, trusted=True
            )[0]
        except errors.ApiError:
            return None

    def write_status(
        self, res: Resource, obj: dict[str, Any], status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Set an object's status, if it changed."""
        if obj.get("status") == status:
            return obj
        try:
            return self.store.update_status(
                res, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], status
            )
        except errors.ApiError:
            return None

    def delete(
        self,
        res: Resource,
        obj: dict[str, Any],
        propagation: str | None = "Background",
        grace: int | None = None,
    ) -> None:
        with contextlib.suppress(errors.ApiError):
            self.store.delete(
                res,
                obj["metadata"].get("namespace", ""),
                obj["metadata"]["name"],
                precondition_uid=obj["metadata"].get("uid"),
                propagation=propagation,
                grace_seconds=grace,
            )

    def record(
        self,
        involved: dict[str, Any],
        event_type: str,
        reason: str,
        message: str,
        component: str,
        host: str | None = None,
        field_path: str | None = None,
    ) -> None:
        """A core/v1 Event about `involved`, aggregated as the client-go event recorder's correlator does:
        the same (object, reason, message, source) again bumps `count` and `lastTimestamp`."""
        metadata = involved["metadata"]
        namespace = metadata.get("namespace") or "default"
        if self.store.peek(NAMESPACES, "", namespace) is None:
            return
        key = (namespace, metadata.get("uid") or "", reason, message, component)
        existing = self.store.peek(EVENTS, namespace, self._events.get(key, ""))
        if existing is not None:
            updated = dict(existing)
            updated["count"] = int(existing.get("count", 1)) + 1
            updated["lastTimestamp"] = now()
            self.update(EVENTS, updated)
            return
        stamp = now()
        involved_ref: dict[str, Any] = {
            "kind": involved["kind"],
            "name": metadata["name"],
            "uid": metadata.get("uid"),
            "apiVersion": involved["apiVersion"],
            "resourceVersion": metadata.get("resourceVersion"),
        }
        if metadata.get("namespace"):
            involved_ref["namespace"] = metadata["namespace"]
        if field_path:
            involved_ref["fieldPath"] = field_path
        source: dict[str, Any] = {"component": component}
        if host:
            source["host"] = host
        name = f"{metadata['name']}.{uuid.uuid4().hex[:16]}"
        if len(self._events) > 100000:
            self._events.clear()
        self._events[key] = name
        self.create(
            EVENTS,
            namespace,
            {
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": involved_ref,
                "reason": reason,
                "message": message,
                "source": source,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
                "type": event_type,
                "eventTime": None,
                "reportingComponent": component,
                "reportingInstance": host or "",
            },
        )


def _report_end(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        print("k8s-sim: the controller loop stopped", file=sys.stderr)
        traceback.print_exception(task.exception())
