"""The PersistentVolume controller: binding claims to volumes, and provisioning them.

https://kubernetes.io/docs/concepts/storage/persistent-volumes/#binding: a Pending PVC binds to an
Available PV of the same storageClassName (or ""), whose accessModes include the claim's, whose
volumeMode is the claim's, whose capacity is at least the request, and whose labels match the claim's
selector; the smallest such PV wins; a PV pre-bound by `claimRef`, or a claim naming its `volumeName`, binds
to that one only. Binding writes what the real controller writes: PV `spec.claimRef` and phase Bound; PVC
`spec.volumeName`, the annotations `pv.kubernetes.io/bind-completed` and
`pv.kubernetes.io/bound-by-controller`,
and status phase Bound with the PV's accessModes and capacity.

Dynamic provisioning (https://kubernetes.io/docs/concepts/storage/dynamic-provisioning/): with no matching
PV and a StorageClass whose provisioner is not `kubernetes.io/no-provisioner`, a PV `pvc-<claim uid>` of the
requested size is created (a CSI volume of that driver, the class's reclaimPolicy, annotation
`pv.kubernetes.io/provisioned-by`) and bound, with Event ProvisioningSucceeded; a class with
`volumeBindingMode: WaitForFirstConsumer` waits for the scheduler's `volume.kubernetes.io/selected-node`
annotation (Event WaitForFirstConsumer until then). Without either: Event FailedBinding "no persistent
volumes available for this claim and no storage class is set".

When a bound claim is deleted its PV is Released (Retain) or deleted (Delete). Simplified: no volume node
affinity, no expansion, no data sources.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.k8s_sim import quantity
from tests.k8s_sim.controllers.workloads import matches_selector
from tests.k8s_sim.runtime import PVCS, PVS, STORAGECLASSES, Component

COMPONENT = "persistentvolume-controller"


def _size(obj: dict[str, Any], path: str) -> int:
    spec = obj.get("spec") or {}
    value = (
        (spec.get("capacity") or {})
        if path == "capacity"
        else ((spec.get("resources") or {}).get("requests") or {})
    )
    try:
        return quantity.whole(value.get("storage", 0))
    except ValueError:
        return 0


class VolumeBinder(Component):
    interests = frozenset({"persistentvolumeclaims", "persistentvolumes", "storageclasses"})

    def __init__(self, runtime) -> None:
        super().__init__(runtime)
        self._reported: dict[str, str] = {}

    def sync(self) -> None:
        claims = {}
        for claim in list(self.store.iter(PVCS)):
            claims[claim["metadata"]["uid"]] = claim
        for volume in list(self.store.iter(PVS)):
            self._sync_volume(volume, claims)
        for claim in list(claims.values()):
            if (claim.get("status") or {}).get("phase") != "Bound" and not claim["metadata"].get(
                "deletionTimestamp"
            ):
                self._bind_claim(claim)

    def _sync_volume(self, volume: dict[str, Any], claims: dict[str, dict[str, Any]]) -> None:
        ref = (volume.get("spec") or {}).get("claimRef")
        phase = (volume.get("status") or {}).get("phase")
        if not ref:
            if phase != "Available":
                self.runtime.write_status(PVS, volume, {"phase": "Available"})
            return
        claim = claims.get(ref.get("uid", "")) if ref.get("uid") else None
        if ref.get("uid") and claim is None:
            policy = volume["spec"].get("persistentVolumeReclaimPolicy", "Retain")
            if policy == "Delete":
                self.runtime.delete(PVS, volume)
            elif phase != "Released":
                self.runtime.write_status(PVS, volume, {"phase": "Released"})
            return
        if ref.get("uid") and phase != "Bound":
            self.runtime.write_status(PVS, volume, {"phase": "Bound"})

    def _candidates(self, claim: dict[str, Any]) -> list[dict[str, Any]]:
        spec = claim.get("spec") or {}
        class_name = spec.get("storageClassName") or ""
        modes = set(spec.get("accessModes") or [])
        mode = spec.get("volumeMode", "Filesystem")
        request = _size(claim, "request")
        fits = []
        for volume in self.store.iter(PVS):
            vspec = volume.get("spec") or {}
            ref = vspec.get("claimRef")
            if ref and not (
                ref.get("name") == claim["metadata"]["name"]
                and ref.get("namespace") == claim["metadata"]["namespace"]
                and ref.get("uid") in (None, "", claim["metadata"]["uid"])
            ):
                continue
            if (volume.get("status") or {}).get("phase") not in (None, "Available", "Pending") and not ref:
                continue
            if spec.get("volumeName") and spec["volumeName"] != volume["metadata"]["name"]:
                continue
            if (vspec.get("storageClassName") or "") != class_name:
                continue
            if not modes <= set(vspec.get("accessModes") or []):
                continue
            if vspec.get("volumeMode", "Filesystem") != mode:
                continue
            if _size(volume, "capacity") < request:
                continue
            if spec.get("selector") and not matches_selector(
                spec["selector"], volume["metadata"].get("labels") or {}
            ):
                continue
            fits.append(volume)
        fits.sort(key=lambda v: (_size(v, "capacity"), v["metadata"]["name"]))
        return fits

    def _bind_claim(self, claim: dict[str, Any]) -> None:
        candidates = self._candidates(claim)
        if candidates:
            self._bind(claim, candidates[0])
            return
        spec = claim.get("spec") or {}
        class_name = spec.get("storageClassName")
        storage_class = self.store.peek(STORAGECLASSES, "", class_name) if class_name else None
        if storage_class is None or storage_class.get("provisioner") == "kubernetes.io/no-provisioner":
            if class_name and storage_class is None:
                message = f'storageclass.storage.k8s.io "{class_name}" not found'
                kind = "Warning"
                reason = "ProvisioningFailed"
            else:
                message = "no persistent volumes available for this claim and no storage class is set"
                kind, reason = "Normal", "FailedBinding"
            self._report(claim, kind, reason, message)
            return
        annotations = claim["metadata"].get("annotations") or {}
        if storage_class.get("volumeBindingMode") == "WaitForFirstConsumer" and not annotations.get(
            "volume.kubernetes.io/selected-node"
        ):
            self._report(
                claim,
                "Normal",
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            )
            return
        provisioner = storage_class.get("provisioner", "")
        name = f"pvc-{claim['metadata']['uid']}"
        request = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
        volume = {
            "metadata": {
                "name": name,
                "annotations": {"pv.kubernetes.io/provisioned-by": provisioner},
            },
            "spec": {
                "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
                "capacity": {"storage": request},
                "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy", "Delete"),
                "storageClassName": class_name,
                "volumeMode": spec.get("volumeMode", "Filesystem"),
                "csi": {"driver": provisioner, "volumeHandle": name, "fsType": "ext4"},
            },
        }
        if storage_class.get("mountOptions"):
            volume["spec"]["mountOptions"] = list(storage_class["mountOptions"])
        created = self.runtime.create(PVS, "", volume)
        if created is None:
            return
        self.runtime.record(
            claim,
            "Normal",
            "ProvisioningSucceeded",
            f"Successfully provisioned volume {name}",
            f"{provisioner}_simulated-provisioner",
        )
        self._bind(claim, created)

    def _report(self, claim: dict[str, Any], kind: str, reason: str, message: str) -> None:
        if self._reported.get(claim["metadata"]["uid"]) == message:
            return
        self._reported[claim["metadata"]["uid"]] = message
        self.runtime.record(claim, kind, reason, message, COMPONENT)

    def _bind(self, claim: dict[str, Any], volume: dict[str, Any]) -> None:
        volume = copy.deepcopy(volume)
        volume["spec"]["claimRef"] = {
            "kind": "PersistentVolumeClaim",
            "namespace": claim["metadata"]["namespace"],
            "name": claim["metadata"]["name"],
            "uid": claim["metadata"]["uid"],
            "apiVersion": "v1",
            "resourceVersion": claim["metadata"]["resourceVersion"],
        }
        volume["metadata"].setdefault("annotations", {})["pv.kubernetes.io/bound-by-controller"] = "yes"
        written = self.runtime.update(PVS, volume)
        if written is None:
            return
        self.runtime.write_status(PVS, written, {"phase": "Bound"})
        bound = copy.deepcopy(
            self.store.peek(PVCS, claim["metadata"]["namespace"], claim["metadata"]["name"])
        )
        if bound is None:
            return
        bound["spec"]["volumeName"] = volume["metadata"]["name"]
        annotations = bound["metadata"].setdefault("annotations", {})
        annotations["pv.kubernetes.io/bind-completed"] = "yes"
        annotations["pv.kubernetes.io/bound-by-controller"] = "yes"
        bound = self.runtime.update(PVCS, bound) or bound
        self.runtime.write_status(
            PVCS,
            bound,
            {
                "phase": "Bound",
                "accessModes": list(volume["spec"].get("accessModes") or []),
                "capacity": dict(volume["spec"].get("capacity") or {}),
            },
        )
        self._reported.pop(claim["metadata"]["uid"], None)
