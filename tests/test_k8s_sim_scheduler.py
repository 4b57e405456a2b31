"""The simulator's fixture cluster and scheduler, through the official client, against the Kubernetes docs.

- the nodes: https://kubernetes.io/docs/reference/setup-tools/kubeadm/implementation-details/ (the
  control-plane label and taint), the NVIDIA GPU operator's labels, `nvidia.com/gpu` allocatable;
- placement: https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/ (nodeSelector, node
  affinity operators), https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/,
  https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/ (requests against
  allocatable; extended resources only in limits or equal to them);
- the FailedScheduling message: kube-scheduler's FitError format (pkg/scheduler/framework/types.go).
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.fixtures.kubernetes import wait_until

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
GPU_NODES = {"gpu-node-1", "gpu-node-2", "gpu-node-3"}
PREEMPTION_NOT_HELPFUL = (
    "no new claims to deallocate, preemption: 0/4 nodes are available: "
    "4 Preemption is not helpful for scheduling."
)


def pod(name: str, gpus: int = 0, tolerate: bool = True, **spec) -> dict:
    container = {"name": "main", "image": "busybox:1.36"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    body = {"metadata": {"name": name}, "spec": {"containers": [container], **spec}}
    if tolerate:
        body["spec"].setdefault("tolerations", []).append(GPU_TOLERATION)
    return body


def bound(core: client.CoreV1Api, namespace: str, name: str) -> str | None:
    return core.read_namespaced_pod(name, namespace).spec.node_name


def unschedulable(core: client.CoreV1Api, namespace: str, name: str):
    """The PodScheduled=False condition of a pending pod, once the scheduler wrote it."""
    found = core.read_namespaced_pod(name, namespace)
    for cond in found.status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False":
            return cond
    return None


def test_fixture_nodes_are_labelled_and_tainted_as_kubeadm_and_the_gpu_operator_do(k8s_api):
    nodes = {n.metadata.name: n for n in client.CoreV1Api(k8s_api).list_node().items}
    assert set(nodes) == {"control-plane-1", *GPU_NODES}
    control = nodes["control-plane-1"]
    assert control.metadata.labels["node-role.kubernetes.io/control-plane"] == ""
    assert [(t.key, t.value, t.effect) for t in control.spec.taints] == [
        ("node-role.kubernetes.io/control-plane", None, "NoSchedule")
    ]
    assert "nvidia.com/gpu" not in control.status.allocatable
    products = {}
    for name in GPU_NODES:
        node = nodes[name]
        labels = node.metadata.labels
        assert labels["nvidia.com/gpu.present"] == "true"
        assert labels["nvidia.com/gpu.count"] == node.status.allocatable["nvidia.com/gpu"]
        assert int(labels["nvidia.com/gpu.memory"]) > 40000
        assert [(t.key, t.effect) for t in node.spec.taints] == [("nvidia.com/gpu", "NoSchedule")]
        assert {"cpu", "memory", "ephemeral-storage", "pods"} <= set(node.status.allocatable)
        products[name] = labels["nvidia.com/gpu.product"]
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready[0].status == "True" and ready[0].reason == "KubeletReady"
    assert products == {
        "gpu-node-1": "NVIDIA-H100-80GB-HBM3",
        "gpu-node-2": "NVIDIA-H100-80GB-HBM3",
        "gpu-node-3": "NVIDIA-L40S",
    }


def test_gpu_pod_lands_on_a_gpu_node_never_the_control_plane(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    for i in range(4):
        core.create_namespaced_pod(k8s_namespace, pod(f"gpu-{i}", gpus=1))
    nodes = {wait_until(lambda i=i: bound(core, k8s_namespace, f"gpu-{i}")) for i in range(4)}
    assert nodes <= GPU_NODES
    scheduled = core.read_namespaced_pod("gpu-0", k8s_namespace)
    cond = next(c for c in scheduled.status.conditions if c.type == "PodScheduled")
    assert cond.status == "True"
    events = core.list_namespaced_event(k8s_namespace, field_selector="involvedObject.name=gpu-0").items
    assert any(
        e.reason == "Scheduled"
        and e.message == f"Successfully assigned {k8s_namespace}/gpu-0 to {scheduled.spec.node_name}"
        and e.source.component == "default-scheduler"
        for e in events
    )


def test_a_pod_needing_nine_gpus_stays_pending_with_the_schedulers_message(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(k8s_namespace, pod("nine", gpus=9))
    cond = wait_until(lambda: unschedulable(core, k8s_namespace, "nine"))
    expected = (
        "0/4 nodes are available: 1 node(s) had untolerated taint(s), 3 Insufficient nvidia.com/gpu. "
        + PREEMPTION_NOT_HELPFUL
    )
    assert (cond.reason, cond.message) == ("Unschedulable", expected)
    found = core.read_namespaced_pod("nine", k8s_namespace)
    assert found.status.phase == "Pending" and found.spec.node_name is None
    events = wait_until(
        lambda: [
            e
            for e in core.list_namespaced_event(
                k8s_namespace, field_selector="involvedObject.name=nine"
            ).items
            if e.reason == "FailedScheduling"
        ]
    )
    assert events[0].type == "Warning" and events[0].message == expected
    assert events[0].source.component == "default-scheduler"


def test_a_pod_without_the_toleration_cannot_land_on_gpu_nodes(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(k8s_namespace, pod("plain", tolerate=False))
    cond = wait_until(lambda: unschedulable(core, k8s_namespace, "plain"))
    assert (
        cond.message
        == "0/4 nodes are available: 4 node(s) had untolerated taint(s). " + PREEMPTION_NOT_HELPFUL
    )
    # Tolerating the control-plane taint too is what lets a pod go there.
    everywhere = pod("everywhere", tolerate=False)
    everywhere["spec"]["tolerations"] = [
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}
    ]
    everywhere["spec"]["nodeSelector"] = {"node-role.kubernetes.io/control-plane": ""}
    core.create_namespaced_pod(k8s_namespace, everywhere)
    assert wait_until(lambda: bound(core, k8s_namespace, "everywhere")) == "control-plane-1"


def test_node_selector_on_the_product_picks_the_odd_node(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(
        k8s_namespace, pod("l40s", gpus=1, nodeSelector={"nvidia.com/gpu.product": "NVIDIA-L40S"})
    )
    assert wait_until(lambda: bound(core, k8s_namespace, "l40s")) == "gpu-node-3"
    core.create_namespaced_pod(
        k8s_namespace, pod("a100", gpus=1, nodeSelector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"})
    )
    cond = wait_until(lambda: unschedulable(core, k8s_namespace, "a100"))
    assert cond.message == (
        "0/4 nodes are available: 1 node(s) had untolerated taint(s), 3 node(s) didn't match Pod's node "
        "affinity/selector. " + PREEMPTION_NOT_HELPFUL
    )


@pytest.mark.parametrize(
    ("expressions", "expected"),
    [
        ([{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-L40S"]}], {"gpu-node-3"}),
        (
            [{"key": "nvidia.com/gpu.product", "operator": "NotIn", "values": ["NVIDIA-L40S"]}],
            {"gpu-node-1", "gpu-node-2"},
        ),
        ([{"key": "nvidia.com/gpu.present", "operator": "Exists"}], GPU_NODES),
        ([{"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"}], set()),
        ([{"key": "nvidia.com/gpu.count", "operator": "Gt", "values": ["4"]}], {"gpu-node-1", "gpu-node-2"}),
        ([{"key": "nvidia.com/gpu.count", "operator": "Lt", "values": ["8"]}], {"gpu-node-3"}),
        (
            [{"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["50000"]}],
            {"gpu-node-1", "gpu-node-2"},
        ),
    ],
)
def test_required_node_affinity_operators(k8s_api, k8s_namespace, expressions, expected):
    core = client.CoreV1Api(k8s_api)
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }
    core.create_namespaced_pod(k8s_namespace, pod("p", affinity=affinity))
    if not expected:
        cond = wait_until(lambda: unschedulable(core, k8s_namespace, "p"))
        assert "3 node(s) didn't match Pod's node affinity/selector" in cond.message
        return
    assert wait_until(lambda: bound(core, k8s_namespace, "p")) in expected


def test_node_selector_terms_are_ored(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    terms = [
        {
            "matchExpressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NO-SUCH-GPU"]}
            ]
        },
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["gpu-node-2"]}]},
    ]
    affinity = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
    }
    core.create_namespaced_pod(k8s_namespace, pod("p", affinity=affinity))
    assert wait_until(lambda: bound(core, k8s_namespace, "p")) == "gpu-node-2"


def test_requests_are_counted_against_allocatable_and_a_freed_node_is_retried(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    h100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    core.create_namespaced_pod(k8s_namespace, pod("a", gpus=8, nodeSelector=h100))
    core.create_namespaced_pod(k8s_namespace, pod("b", gpus=8, nodeSelector=h100))
    assert {
        wait_until(lambda: bound(core, k8s_namespace, "a")),
        wait_until(lambda: bound(core, k8s_namespace, "b")),
    } == {
        "gpu-node-1",
        "gpu-node-2",
    }
    core.create_namespaced_pod(k8s_namespace, pod("c", gpus=1, nodeSelector=h100))
    cond = wait_until(lambda: unschedulable(core, k8s_namespace, "c"))
    # Each H100 node could take it if its pods went: preemption would be helpful, but finds no victims.
    assert cond.message == (
        "0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had "
        "untolerated taint(s), 2 Insufficient nvidia.com/gpu. no new claims to deallocate, preemption: 0/4 "
        "nodes are available: 2 No preemption victims found for incoming pod, 2 Preemption is not helpful "
        "for scheduling."
    )
    freed = core.read_namespaced_pod("a", k8s_namespace).spec.node_name
    core.delete_namespaced_pod("a", k8s_namespace, grace_period_seconds=0)
    assert wait_until(lambda: bound(core, k8s_namespace, "c")) == freed


def test_cpu_memory_and_ephemeral_storage_requests(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    big = pod("big")
    big["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "100", "memory": "1Ti", "ephemeral-storage": "100Gi"}
    }
    core.create_namespaced_pod(k8s_namespace, big)
    # The L40S node (63 cpus, ~500 GiB) has too little of both; the H100 nodes (191 cpus, ~2 TiB) fit.
    assert wait_until(lambda: bound(core, k8s_namespace, "big")) in {"gpu-node-1", "gpu-node-2"}
    huge = pod("huge")
    huge["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "500", "memory": "100Ti"}}
    core.create_namespaced_pod(k8s_namespace, huge)
    cond = wait_until(lambda: unschedulable(core, k8s_namespace, "huge"))
    assert cond.message == (
        "0/4 nodes are available: 1 node(s) had untolerated taint(s), 3 Insufficient cpu, "
        "3 Insufficient memory. " + PREEMPTION_NOT_HELPFUL
    )


def test_extended_resources_must_be_limits_and_equal_to_requests(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    only_requests = pod("r")
    only_requests["spec"]["containers"][0]["resources"] = {"requests": {"nvidia.com/gpu": "1"}}
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod(k8s_namespace, only_requests)
    body = json.loads(caught.value.body)
    assert caught.value.status == 422
    assert body["details"]["causes"][0]["field"] == "spec.containers[0].resources.limits"
    assert "Limit must be set for non overcommitable resources" in body["message"]
    unequal = pod("u")
    unequal["spec"]["containers"][0]["resources"] = {
        "requests": {"nvidia.com/gpu": "1"},
        "limits": {"nvidia.com/gpu": "2"},
    }
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod(k8s_namespace, unequal)
    assert caught.value.status == 422
    assert "must be equal to nvidia.com/gpu limit of 2" in json.loads(caught.value.body)["message"]
    created = core.create_namespaced_pod(k8s_namespace, pod("limits-only", gpus=2))
    assert created.spec.containers[0].resources.requests == {"nvidia.com/gpu": "2"}


def test_a_pending_pod_is_retried_when_a_node_changes(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    label = f"sim.test/{k8s_namespace}"
    core.create_namespaced_pod(k8s_namespace, pod("waits", nodeSelector={label: "yes"}))
    wait_until(lambda: unschedulable(core, k8s_namespace, "waits"))
    core.patch_node("gpu-node-2", {"metadata": {"labels": {label: "yes"}}})
    try:
        assert wait_until(lambda: bound(core, k8s_namespace, "waits")) == "gpu-node-2"
    finally:
        core.patch_node("gpu-node-2", {"metadata": {"labels": {label: None}}})


def test_scheduling_gates_keep_a_pod_pending(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(k8s_namespace, pod("gated", schedulingGates=[{"name": "example.com/wait"}]))
    cond = wait_until(lambda: unschedulable(core, k8s_namespace, "gated"))
    assert (cond.reason, cond.message) == (
        "SchedulingGated",
        "Scheduling is blocked due to non-empty scheduling gates",
    )
