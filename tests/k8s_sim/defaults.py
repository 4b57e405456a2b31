"""Defaulting on create, as the real API server fills in what a client left out.

Two sources, as in the real server:

- the API's defaulting functions (`SetDefaults_*` in k8s.io/kubernetes/pkg/apis/*/v1/defaults.go): pod specs
  (in Pods and in every pod template) get `restartPolicy: Always`, `dnsPolicy: ClusterFirst`,
  `schedulerName`, `terminationGracePeriodSeconds: 30`, `securityContext: {}`; containers get
  `terminationMessagePath: /dev/termination-log`, `terminationMessagePolicy: File`, `imagePullPolicy`
  (Always for `:latest` or no tag, else IfNotPresent: https://kubernetes.io/docs/concepts/containers/images/#imagepullpolicy-defaulting),
  `resources: {}`, port protocols, probe timings; a Pod's container that sets only limits gets requests
  equal to them (https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/#requests-and-limits);
  workloads get their replicas, strategies and history limits; Jobs their completions/parallelism pair,
  `backoffLimit: 6`, `podReplacementPolicy`; Services a cluster IP, families and port defaults.
- the admission plugins that mutate Pods on create: ServiceAccount (`serviceAccountName: default`; the
  projected token volume is NOT added), DefaultTolerationSeconds (`node.kubernetes.io/not-ready` and
  `.../unreachable` NoExecute tolerations for 300 s:
  https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/#taint-based-evictions),
  Priority (`priority: 0`, `preemptionPolicy: PreemptLowerPriority`), DefaultStorageClass (a PVC without a
  class gets the default StorageClass's name).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

DEFAULT_TOLERATION_SECONDS = 300


def _image_pull_policy(image: str) -> str:
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last or last.rsplit(":", 1)[1] == "latest":
        return "Always"
    return "IfNotPresent"


def _probe(probe: dict[str, Any] | None) -> None:
    if not isinstance(probe, dict):
        return
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    if isinstance(probe.get("httpGet"), dict):
        probe["httpGet"].setdefault("scheme", "HTTP")
        probe["httpGet"].setdefault("path", "/")


def _container(container: dict[str, Any]) -> None:
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    if container.get("image"):
        container.setdefault("imagePullPolicy", _image_pull_policy(container["image"]))
    container.setdefault("resources", {})
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        _probe(container.get(probe))


def pod_spec(spec: dict[str, Any]) -> None:
    """SetDefaults_PodSpec and the container defaults (Pods and pod templates)."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            if isinstance(container, dict):
                _container(container)
    for volume in spec.get("volumes") or []:
        if not isinstance(volume, dict):
            continue
        for source in ("secret", "configMap", "downwardAPI", "projected"):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault("defaultMode", 0o644)


def _template(obj: dict[str, Any]) -> None:
    template = (obj.get("spec") or {}).get("template")
    if isinstance(template, dict):
        pod_spec(template.setdefault("spec", {}))


def pod(obj: dict[str, Any]) -> None:
    """SetDefaults_Pod, then the admission plugins that mutate a Pod on create."""
    spec = obj.setdefault("spec", {})
    pod_spec(spec)
    spec.setdefault("enableServiceLinks", True)
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            resources = container.get("resources") or {}
            limits = resources.get("limits") or {}
            if limits:
                requests = resources.setdefault("requests", {})
                for name, value in limits.items():
                    requests.setdefault(name, value)
                container["resources"] = resources
    # ServiceAccount admission (simplified: the ServiceAccount need not exist, no token volume is added).
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    # DefaultTolerationSeconds admission.
    tolerations = spec.setdefault("tolerations", [])
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(
            t.get("operator") == "Exists"
            and t.get("key") in (key, None, "")
            and t.get("effect") in ("NoExecute", None, "")
            for t in tolerations
            if isinstance(t, dict)
        ):
            tolerations.append(
                {
                    "key": key,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": DEFAULT_TOLERATION_SECONDS,
                }
            )
    # Priority admission (no PriorityClass named: the global default, 0).
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")


def job(obj: dict[str, Any], uid: str) -> None:
    spec = obj.setdefault("spec", {})
    name = obj["metadata"]["name"]
    labels = {
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    }
    if not spec.get("manualSelector"):
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
        template_meta.setdefault("labels", {}).update(labels)
    # SetDefaults_Job: a Job without labels gets its template's.
    template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels")
    if template_labels and not obj["metadata"].get("labels"):
        obj["metadata"]["labels"] = dict(template_labels)
    # SetDefaults_Job: completions and parallelism default to 1 only when both are unset; a Job with
    # parallelism and no completions is a work queue.
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
        spec["parallelism"] = 1
    spec.setdefault("parallelism", 1)
    if spec.get("backoffLimitPerIndex") is not None:
        spec.setdefault("backoffLimit", 2**31 - 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("manualSelector", False)
    spec.setdefault(
        "podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed"
    )
    for rule in (spec.get("podFailurePolicy") or {}).get("rules") or []:
        for pattern in rule.get("onPodConditions") or []:
            pattern.setdefault("status", "True")
    _template(obj)


def deployment(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    _template(obj)


def replica_set(obj: dict[str, Any]) -> None:
    obj.setdefault("spec", {}).setdefault("replicas", 1)
    _template(obj)


def daemon_set(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    strategy = spec.setdefault("updateStrategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", 1)
        rolling.setdefault("maxSurge", 0)
    spec.setdefault("revisionHistoryLimit", 10)
    _template(obj)


def stateful_set(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("podManagementPolicy", "OrderedReady")
    strategy = spec.setdefault("updateStrategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
    for claim in spec.get("volumeClaimTemplates") or []:
        claim.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
    _template(obj)


def persistent_volume_claim(obj: dict[str, Any], default_class: str | None) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("volumeMode", "Filesystem")
    if "storageClassName" not in spec and default_class is not None:
        spec["storageClassName"] = default_class
    obj["status"] = {"phase": "Pending"}


WORKLOADS: dict[str, Callable[[dict[str, Any]], None]] = {
    "Deployment": deployment,
    "ReplicaSet": replica_set,
    "DaemonSet": daemon_set,
    "StatefulSet": stateful_set,
}
"""The workload kinds' defaulting, by kind: the same on create and on every update."""


def persistent_volume_spec(obj: dict[str, Any]) -> None:
    """A PersistentVolume's spec defaults (on create and on every update)."""
    spec = obj.setdefault("spec", {})
    spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
    spec.setdefault("volumeMode", "Filesystem")


def persistent_volume(obj: dict[str, Any]) -> None:
    persistent_volume_spec(obj)
    obj["status"] = {"phase": "Pending"}


class ClusterIPs:
    """The Service cluster IP allocator (10.96.0.0/12, the kubeadm default service CIDR)."""

    def __init__(self) -> None:
        self.network = ipaddress.ip_network("10.96.0.0/12")
        self.next = 1
        self.used: set[str] = set()

    def allocate(self) -> str:
        while True:
            address = str(self.network[self.next])
            self.next += 1
            if address not in self.used:
                self.used.add(address)
                return address


def service(obj: dict[str, Any], ips: ClusterIPs) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        if not spec.get("clusterIP"):
            spec["clusterIP"] = ips.allocate()
        elif spec["clusterIP"] != "None":
            ips.used.add(spec["clusterIP"])
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        if "port" in port:
            port.setdefault("targetPort", port["port"])
    obj["status"] = {"loadBalancer": {}}
