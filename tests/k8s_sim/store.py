"""Generic object storage with the real API's bookkeeping, and the event history that watches read.

- One global resourceVersion counter (as etcd's revision): every write takes the next value, and a List's
  `metadata.resourceVersion` is the counter at the time of the list.
- metadata.uid (a UUID), creationTimestamp (RFC 3339, seconds) and generateName are set on create;
  metadata.generation starts at 1 and grows when anything but metadata and status changes, for kinds with a
  status subresource (`Resource.has_generation`).
- For kinds with a status subresource, status is dropped on create and kept from the stored object on an
  update of the main resource; `/status` updates change status only (as the real registry strategies do).
- Namespaced objects need their Namespace (404 `namespaces "x" not found` otherwise). Deleting a Namespace
  deletes its content and the Namespace at once (the real namespace controller does it asynchronously,
  with phase Terminating in between; not yet).
- Pods get `status.phase: Pending` and `status.qosClass` on create, Jobs their selector and the
  controller-uid labels, as the real API server defaults them. Other defaulting is not done yet.

The history of the last `history_size` events is kept for watches; a watch from an older resourceVersion
gets 410 Expired, as from a compacted etcd.

Controllers, a scheduler and a kubelet stand-in (next steps) should run in the server's event loop and
use this class directly (`create`, `replace`, `update_status`, `delete`, `subscribe`), so that their
writes get resourceVersions and reach watches exactly as a client's do.
"""

from __future__ import annotations

import asyncio
import copy
import random
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.k8s_sim import errors
from tests.k8s_sim.resources import RESOURCES, Resource, find
from tests.k8s_sim.validation import validate

Key = tuple[str, str, str, str]  # group, plural, namespace ("" when cluster-scoped), name
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the real API's utilrand alphabet


@dataclass(frozen=True)
class Event:
    resource_version: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: Resource
    obj: dict[str, Any]
    old: dict[str, Any] | None


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _qos_class(spec: dict[str, Any]) -> str:
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    requests_seen = guaranteed = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        if limits or requests:
            requests_seen = True
        for name in ("cpu", "memory"):
            if name not in limits or requests.get(name, limits[name]) != limits[name]:
                guaranteed = False
    if not requests_seen:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


class Store:
    def __init__(self, history_size: int = 10000, field_validation: str = "Strict") -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.revision = 1
        self.history: deque[Event] = deque(maxlen=history_size)
        self.subscribers: set[asyncio.Queue[Event]] = set()
        self.default_field_validation = field_validation
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(find("", "v1", "namespaces"), "", {"metadata": {"name": name}})

    # -- reading ----------------------------------------------------------------------------------------

    @staticmethod
    def key(resource: Resource, namespace: str, name: str) -> Key:
        return (resource.group, resource.plural, namespace if resource.namespaced else "", name)

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        obj = self.objects.get(self.key(resource, namespace, name))
        if obj is None:
            raise errors.not_found(resource.qualified, resource.group, resource.plural, name)
        return copy.deepcopy(obj)

    def list(self, resource: Resource, namespace: str | None) -> list[dict[str, Any]]:
        """Objects of a resource (in `namespace`, or all when None), in etcd's key order."""
        found = [
            obj
            for (group, plural, ns, _), obj in self.objects.items()
            if (group, plural) == (resource.group, resource.plural) and (namespace is None or ns == namespace)
        ]
        found.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return [copy.deepcopy(o) for o in found]

    def require_namespace(self, resource: Resource, namespace: str) -> None:
        if resource.namespaced and (("", "namespaces", "", namespace) not in self.objects):
            raise errors.not_found("namespaces", "", "namespaces", namespace)

    # -- writing ----------------------------------------------------------------------------------------

    def _emit(
        self, event_type: str, resource: Resource, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        event = Event(int(obj["metadata"]["resourceVersion"]), event_type, resource, copy.deepcopy(obj), old)
        self.history.append(event)
        for queue in list(self.subscribers):
            queue.put_nowait(event)

    def _next_revision(self) -> str:
        self.revision += 1
        return str(self.revision)

    def _prepare(self, resource: Resource, namespace: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        obj = copy.deepcopy(body)
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        if (kind and kind != resource.kind) or (api_version and api_version != resource.api_version):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({resource.api_version})"
                if api_version != resource.api_version
                else f"the kind in the data ({kind}) does not match the expected kind ({resource.kind})"
            )
        obj["kind"], obj["apiVersion"] = resource.kind, resource.api_version
        metadata = obj.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise errors.bad_request("metadata must be an object")
        if resource.namespaced:
            if metadata.get("namespace") and metadata["namespace"] != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        return obj

    def create(
        self,
        resource: Resource,
        namespace: str,
        body: Any,
        field_validation: str | None = None,
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], list[str]]:
        obj = self._prepare(resource, namespace, body)
        metadata = obj["metadata"]
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + "".join(random.choices(_GENERATE_ALPHABET, k=5))
        warnings = validate(resource, obj, field_validation or self.default_field_validation)
        name = metadata["name"]
        self.require_namespace(resource, namespace)
        key = self.key(resource, namespace, name)
        if key in self.objects:
            raise errors.already_exists(resource.qualified, resource.group, resource.plural, name)
        for field in ("resourceVersion", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"):
            metadata.pop(field, None)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now()
        if resource.has_generation:
            metadata["generation"] = 1
        else:
            metadata.pop("generation", None)
        if resource.status:
            obj.pop("status", None)
        self._default(resource, obj)
        if dry_run:
            return obj, warnings
        metadata["resourceVersion"] = self._next_revision()
        self.objects[key] = obj
        self._emit("ADDED", resource, obj, None)
        return copy.deepcopy(obj), warnings

    def _default(self, resource: Resource, obj: dict[str, Any]) -> None:
        if resource.kind == "Namespace":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        elif resource.kind == "Pod":
            spec = obj.setdefault("spec", {})
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("schedulerName", "default-scheduler")
            spec.setdefault("terminationGracePeriodSeconds", 30)
            spec.setdefault("dnsPolicy", "ClusterFirst")
            obj["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}
        elif resource.kind == "Job":
            uid = obj["metadata"]["uid"]
            spec = obj.setdefault("spec", {})
            labels = {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": obj["metadata"]["name"],
                "controller-uid": uid,
                "job-name": obj["metadata"]["name"],
            }
            if not spec.get("manualSelector"):
                spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
                template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
                template_meta.setdefault("labels", {}).update(labels)
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)

    def replace(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        body: Any,
        field_validation: str | None = None,
        subresource: str = "",
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], list[str]]:
        """PUT: the whole object (or, with subresource "status", its status only)."""
        obj = self._prepare(resource, namespace, body)
        metadata = obj["metadata"]
        if metadata.get("name") and metadata["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({metadata['name']}) does not match the name on the URL ({name})"
            )
        metadata["name"] = name
        key = self.key(resource, namespace, name)
        current = self.objects.get(key)
        if current is None:
            raise errors.not_found(resource.qualified, resource.group, resource.plural, name)
        sent_version = metadata.get("resourceVersion")
        if sent_version and sent_version != current["metadata"]["resourceVersion"]:
            raise errors.conflict(resource.qualified, resource.group, resource.plural, name)
        if subresource == "status":
            status = obj.get("status")
            obj = copy.deepcopy(current)
            if status is None:
                obj.pop("status", None)
            else:
                obj["status"] = status
        elif resource.status:
            obj.pop("status", None)
            if "status" in current:
                obj["status"] = copy.deepcopy(current["status"])
        warnings = validate(resource, obj, field_validation or self.default_field_validation)
        metadata = obj["metadata"]
        for field in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
            if field in current["metadata"]:
                metadata[field] = current["metadata"][field]
            else:
                metadata.pop(field, None)
        if resource.has_generation and self._spec_changed(current, obj):
            metadata["generation"] = current["metadata"].get("generation", 1) + 1
        if dry_run:
            return obj, warnings
        unchanged = {k: v for k, v in obj.items() if k != "metadata"} == {
            k: v for k, v in current.items() if k != "metadata"
        } and {k: v for k, v in metadata.items() if k != "resourceVersion"} == {
            k: v for k, v in current["metadata"].items() if k != "resourceVersion"
        }
        if unchanged:
            # The real API writes nothing (and keeps the resourceVersion) when an update changes nothing.
            return copy.deepcopy(current), warnings
        metadata["resourceVersion"] = self._next_revision()
        self.objects[key] = obj
        self._emit("MODIFIED", resource, obj, current)
        return copy.deepcopy(obj), warnings

    @staticmethod
    def _spec_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
        ignored = ("metadata", "status", "kind", "apiVersion")
        return {k: v for k, v in old.items() if k not in ignored} != {
            k: v for k, v in new.items() if k not in ignored
        }

    def update_status(
        self, resource: Resource, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """For controllers: set an object's status (a `/status` PUT, no resourceVersion precondition)."""
        current = self.get(resource, namespace, name)
        current["status"] = status
        current["metadata"].pop("resourceVersion", None)
        return self.replace(resource, namespace, name, current, subresource="status")[0]

    def delete(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        precondition_version: str | None = None,
        precondition_uid: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        key = self.key(resource, namespace, name)
        current = self.objects.get(key)
        if current is None:
            raise errors.not_found(resource.qualified, resource.group, resource.plural, name)
        if precondition_version and precondition_version != current["metadata"]["resourceVersion"]:
            raise errors.conflict(resource.qualified, resource.group, resource.plural, name)
        if precondition_uid and precondition_uid != current["metadata"]["uid"]:
            raise errors.ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource.qualified} "{name}": Precondition failed: '
                f"UID in precondition: {precondition_uid}, UID in object meta: {current['metadata']['uid']}",
                {
                    "name": name,
                    **({"group": resource.group} if resource.group else {}),
                    "kind": resource.plural,
                },
            )
        if dry_run:
            return copy.deepcopy(current)
        if resource.kind == "Namespace":
            for other in RESOURCES:
                if other.namespaced:
                    for obj in self.list(other, name):
                        self.delete(other, name, obj["metadata"]["name"])
        del self.objects[key]
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = self._next_revision()
        if resource.kind == "Namespace":
            gone["metadata"]["deletionTimestamp"] = now()
            gone["status"] = {"phase": "Terminating"}
        self._emit("DELETED", resource, gone, current)
        return gone

    # -- watching ---------------------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self.subscribers.discard(queue)

    def events_since(self, resource_version: int) -> list[Event]:
        """The kept events after `resource_version`; 410 Expired when history before it was dropped."""
        if self.history and resource_version < self.history[0].resource_version - 1:
            raise errors.gone(
                f"too old resource version: {resource_version} ({self.history[0].resource_version - 1})"
            )
        return [e for e in self.history if e.resource_version > resource_version]
