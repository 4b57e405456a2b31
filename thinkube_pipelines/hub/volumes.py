"""The hub's shared storage: SeaweedFS volumes for `notebooks`, `datasets` and `models`: Kubernetes objects.

Each volume is a statically provisioned PersistentVolume on the SeaweedFS CSI driver (`csi.driver` from the
settings, ReadWriteMany, reclaim policy Retain: deleting a claim never deletes anyone's notebooks) and a
claim in the hub's namespace bound to it by `volumeName`. The PV's `volumeAttributes` name the SeaweedFS
collection and its folder in the filer, `/buckets/<collection>`, which is where SeaweedFS's S3 gateway keeps
a bucket of that name: the same data is reachable as files in the notebook pods and through S3.

PVs are cluster-scoped, so their names carry the hub's namespace (`<namespace>-<volume>`); claims are
`thinkube-<volume>` in that namespace. Both carry a storage class name that no provisioner serves
(`STORAGE_CLASS`), so that only these claims bind these volumes and no default StorageClass provisions
something else for them.

`volume_manifests(settings)` is pure (no cluster): the `hub render` command and the deploy use the same
objects; the deploy applies them server-side (thinkube_pipelines/kubernetes/apply.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thinkube_pipelines.hub.settings import HubSettings

VOLUMES = ("notebooks", "datasets", "models")
"""The shared volumes, in the order they are applied and mounted."""
STORAGE_CLASS = "thinkube-seaweedfs-static"
"""The storage class name of the static volumes and their claims (no StorageClass object of that name is
needed: static binding compares names only)."""
LABELS = {
    "app.kubernetes.io/part-of": "thinkube-jupyterhub",
    "app.kubernetes.io/managed-by": "thinkube-pipelines",
}
VOLUME_LABEL = "thinkube.io/volume"


def claim_name(volume: str) -> str:
    """The PersistentVolumeClaim of `volume` in the hub's namespace, which the user pods mount."""
    return f"thinkube-{volume}"


def volume_name(settings: HubSettings, volume: str) -> str:
    """The (cluster-scoped) PersistentVolume of `volume` for the hub in `settings.namespace`."""
    return f"{settings.namespace}-{volume}"


def filer_path(collection: str) -> str:
    """The volume's folder in the filer: where the S3 gateway keeps the bucket named `collection`."""
    return f"/buckets/{collection}"


def volume_manifests(settings: HubSettings) -> list[dict[str, Any]]:
    """The PV and the PVC of every shared volume, PV first (the claim names it), in `VOLUMES` order."""
    manifests: list[dict[str, Any]] = []
    for volume in VOLUMES:
        config = settings.volumes[volume]
        labels = {**LABELS, VOLUME_LABEL: volume}
        pv_name = volume_name(settings, volume)
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv_name, "labels": labels},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "capacity": {"storage": config.size},
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": STORAGE_CLASS,
                    "volumeMode": "Filesystem",
                    "csi": {
                        "driver": settings.csi_driver,
                        # unique per volume and stable: the driver keys its mounts by it
                        "volumeHandle": pv_name,
                        "volumeAttributes": {
                            "collection": config.collection,
                            "path": filer_path(config.collection),
                        },
                        "readOnly": bool(config.read_only),
                    },
                },
            }
        )
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim_name(volume), "namespace": settings.namespace, "labels": labels},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "resources": {"requests": {"storage": config.size}},
                    "storageClassName": STORAGE_CLASS,
                    "volumeMode": "Filesystem",
                    "volumeName": pv_name,
                },
            }
        )
    return manifests
