"""Seeds: the nodes a simulated cluster starts with (`--seed gpu-cluster`, the fixture's default).

`gpu-cluster` is a kubeadm cluster with one control-plane node and three NVIDIA GPU nodes:

- `control-plane-1`: labelled as kubeadm labels a control-plane node (`node-role.kubernetes.io/control-plane`,
  `node.kubernetes.io/exclude-from-external-load-balancers`) and tainted as kubeadm taints it since 1.25:
  `node-role.kubernetes.io/control-plane:NoSchedule`
  (https://kubernetes.io/docs/reference/setup-tools/kubeadm/implementation-details/#mark-the-node-as-control-plane);
- `gpu-node-1`, `gpu-node-2`: 8 x NVIDIA H100 80GB HBM3; `gpu-node-3`: 4 x NVIDIA L40S (the odd one). Each is
  labelled as the NVIDIA GPU operator's GPU Feature Discovery and node labeller label GPU nodes
  (`nvidia.com/gpu.present=true`, `nvidia.com/gpu.product`, `nvidia.com/gpu.count`, `nvidia.com/gpu.memory`
  (MiB per GPU), `nvidia.com/gpu.family`, `nvidia.com/gpu.compute.major/minor`, `nvidia.com/cuda.driver.*`,
  `nvidia.com/cuda.runtime.*`, `nvidia.com/gpu.machine`, `nvidia.com/mig.capable`, `nvidia.com/gpu.replicas`,
  `nvidia.com/gpu.sharing-strategy`, the operator's `nvidia.com/gpu.deploy.*` state labels, and Node Feature
  Discovery's `feature.node.kubernetes.io/pci-10de.present`:
  https://docs.nvidia.com/datacenter/cloud-native/gpu-operator/latest/gpu-feature-discovery.html), with
  `nvidia.com/gpu` in capacity and allocatable (the NVIDIA device plugin's extended resource), and tainted
  `nvidia.com/gpu:NoSchedule`: the GPU operator sets no taint itself; tainting GPU nodes with the key
  `nvidia.com/gpu` and effect NoSchedule is the common practice that the ExtendedResourceToleration admission
  plugin and the managed clusters follow (GKE writes it with the value `present`; here no value, as
  `kubectl taint nodes gpu-node-1 nvidia.com/gpu:NoSchedule` writes it; a toleration with operator Exists
  covers both).

Every node is Ready, with cpu/memory/ephemeral-storage/pods/hugepages capacity, a smaller allocatable
(kubelet reservations), addresses, a podCIDR and nodeInfo as a kubelet reports them.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from tests.k8s_sim.resources import KUBERNETES_VERSION, find
from tests.k8s_sim.store import Store, now

NODES = find("", "v1", "nodes")
CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
GPU_TAINT = {"key": "nvidia.com/gpu", "effect": "NoSchedule"}

H100 = {
    "product": "NVIDIA-H100-80GB-HBM3",
    "memory": "81559",
    "family": "hopper",
    "compute": ("9", "0"),
    "mig": "true",
    "count": 8,
    "machine": "PowerEdge-XE9680",
}
L40S = {
    "product": "NVIDIA-L40S",
    "memory": "46068",
    "family": "ada-lovelace",
    "compute": ("8", "9"),
    "mig": "false",
    "count": 4,
    "machine": "PowerEdge-R760xa",
}


def node_conditions(ready: bool = True) -> list[dict[str, Any]]:
    """A kubelet's node conditions: healthy, or (ready=False) as the node lifecycle controller leaves them
    when the kubelet stops posting status (all Unknown)."""
    stamp = now()
    healthy = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ]
    conditions = []
    for kind, status, reason, message in healthy:
        if not ready:
            status, reason, message = "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."
        conditions.append(
            {
                "type": kind,
                "status": status,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
                "reason": reason,
                "message": message,
            }
        )
    return conditions


def _node(
    name: str,
    index: int,
    labels: dict[str, str],
    taints: list[dict[str, Any]],
    resources: dict[str, str],
    allocatable: dict[str, str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    address = f"10.0.0.{10 + index}"
    uid = hashlib.sha256(name.encode()).hexdigest()
    node = {
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                **labels,
            },
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {"podCIDR": f"10.244.{index}.0/24", "podCIDRs": [f"10.244.{index}.0/24"], "taints": taints},
    }
    status = {
        "capacity": resources,
        "allocatable": allocatable,
        "conditions": node_conditions(),
        "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": uid[:32],
            "systemUUID": f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:32]}",
            "bootID": uid[32:64],
            "kernelVersion": "6.8.0-85-generic",
            "osImage": "Ubuntu 24.04.3 LTS",
            "containerRuntimeVersion": "containerd://2.1.4",
            "kubeletVersion": f"v{KUBERNETES_VERSION}",
            "kubeProxyVersion": f"v{KUBERNETES_VERSION}",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }
    return node, status


def _gpu_labels(gpu: dict[str, Any]) -> dict[str, str]:
    return {
        "feature.node.kubernetes.io/pci-10de.present": "true",
        "nvidia.com/cuda.driver-version.full": "580.95.05",
        "nvidia.com/cuda.driver-version.major": "580",
        "nvidia.com/cuda.driver-version.minor": "95",
        "nvidia.com/cuda.driver-version.revision": "05",
        "nvidia.com/cuda.driver.major": "580",
        "nvidia.com/cuda.driver.minor": "95",
        "nvidia.com/cuda.driver.rev": "05",
        "nvidia.com/cuda.runtime-version.full": "13.0",
        "nvidia.com/cuda.runtime-version.major": "13",
        "nvidia.com/cuda.runtime-version.minor": "0",
        "nvidia.com/cuda.runtime.major": "13",
        "nvidia.com/cuda.runtime.minor": "0",
        "nvidia.com/gfd.timestamp": "1767225600",
        "nvidia.com/gpu-driver-upgrade-state": "upgrade-done",
        "nvidia.com/gpu.compute.major": gpu["compute"][0],
        "nvidia.com/gpu.compute.minor": gpu["compute"][1],
        "nvidia.com/gpu.count": str(gpu["count"]),
        "nvidia.com/gpu.deploy.container-toolkit": "true",
        "nvidia.com/gpu.deploy.dcgm": "true",
        "nvidia.com/gpu.deploy.dcgm-exporter": "true",
        "nvidia.com/gpu.deploy.device-plugin": "true",
        "nvidia.com/gpu.deploy.driver": "true",
        "nvidia.com/gpu.deploy.gpu-feature-discovery": "true",
        "nvidia.com/gpu.deploy.node-status-exporter": "true",
        "nvidia.com/gpu.deploy.operator-validator": "true",
        "nvidia.com/gpu.family": gpu["family"],
        "nvidia.com/gpu.machine": gpu["machine"],
        "nvidia.com/gpu.memory": gpu["memory"],
        "nvidia.com/gpu.mode": "compute",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": gpu["product"],
        "nvidia.com/gpu.replicas": "1",
        "nvidia.com/gpu.sharing-strategy": "none",
        "nvidia.com/mig.capable": gpu["mig"],
        "nvidia.com/mig.strategy": "single",
        "nvidia.com/mps.capable": "false",
    }


def gpu_cluster() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(node, status) pairs of the fixture cluster."""
    nodes = [
        _node(
            "control-plane-1",
            0,
            {
                "node-role.kubernetes.io/control-plane": "",
                "node.kubernetes.io/exclude-from-external-load-balancers": "",
            },
            [dict(CONTROL_PLANE_TAINT)],
            {
                "cpu": "8",
                "memory": "32858100Ki",
                "ephemeral-storage": "203056560Ki",
                "pods": "110",
                "hugepages-1Gi": "0",
                "hugepages-2Mi": "0",
            },
            {
                "cpu": "8",
                "memory": "32755700Ki",
                "ephemeral-storage": "187136925387",
                "pods": "110",
                "hugepages-1Gi": "0",
                "hugepages-2Mi": "0",
            },
        )
    ]
    for index, gpu in enumerate((H100, H100, L40S), start=1):
        cpu = "192" if gpu is H100 else "64"
        memory = "2113442872Ki" if gpu is H100 else "528280576Ki"
        nodes.append(
            _node(
                f"gpu-node-{index}",
                index,
                _gpu_labels(gpu),
                [dict(GPU_TAINT)],
                {
                    "cpu": cpu,
                    "memory": memory,
                    "ephemeral-storage": "3750672384Ki",
                    "nvidia.com/gpu": str(gpu["count"]),
                    "pods": "110",
                    "hugepages-1Gi": "0",
                    "hugepages-2Mi": "0",
                },
                {
                    "cpu": str(int(cpu) - 1),
                    "memory": f"{int(memory[:-2]) - 4 * 1024 * 1024}Ki",
                    "ephemeral-storage": "3456630123212",
                    "nvidia.com/gpu": str(gpu["count"]),
                    "pods": "110",
                    "hugepages-1Gi": "0",
                    "hugepages-2Mi": "0",
                },
            )
        )
    return nodes


SEEDS = {"gpu-cluster": gpu_cluster, "empty": list}


def seed(store: Store, name: str) -> None:
    """Create the seed's nodes in `store` (with their status, as their kubelets would post it)."""
    assert NODES is not None
    for node, status in SEEDS[name]():
        created, _ = store.create(NODES, "", copy.deepcopy(node), trusted=True)
        store.update_status(NODES, "", created["metadata"]["name"], status)
