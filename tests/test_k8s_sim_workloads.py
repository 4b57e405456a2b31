"""Deployments, ReplicaSets, DaemonSets, StatefulSets and volume binding in the simulator.

Expected behaviour: https://kubernetes.io/docs/concepts/workloads/controllers/deployment/ (ReplicaSets per
template, pod-template-hash, revisions, rolling updates, the Available and Progressing conditions and
ProgressDeadlineExceeded: "Failed Deployment"),
https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/,
https://kubernetes.io/docs/concepts/workloads/controllers/statefulset/ (ordinal names, OrderedReady, claims
from volumeClaimTemplates) and https://kubernetes.io/docs/concepts/storage/persistent-volumes/ (binding,
dynamic provisioning, WaitForFirstConsumer).
"""

from __future__ import annotations

import json

from kubernetes import client

from tests.fixtures.kubernetes import wait_until
from tests.k8s_sim.kubelet import SCRIPT_ANNOTATION

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def template(app: str, image: str = "nginx:1.27", script: dict | None = None, **spec) -> dict:
    metadata: dict = {"labels": {"app": app}}
    if script is not None:
        metadata["annotations"] = {SCRIPT_ANNOTATION: json.dumps(script)}
    return {
        "metadata": metadata,
        "spec": {"tolerations": [GPU_TOLERATION], "containers": [{"name": "web", "image": image}], **spec},
    }


def deployment(name: str, replicas: int = 2, **spec) -> dict:
    tmpl = spec.pop("template", None) or template(name)
    return {
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": tmpl, **spec},
    }


def conditions(obj) -> dict:
    return {c.type: (c.status, c.reason, c.message) for c in obj.status.conditions or []}


def rolled_out(apps, namespace, name):
    found = apps.read_namespaced_deployment(name, namespace)
    status, replicas = found.status, found.spec.replicas
    done = (
        status.observed_generation == found.metadata.generation
        and status.updated_replicas == replicas
        and status.replicas == replicas
        and status.available_replicas == replicas
        and conditions(found).get("Progressing", (None, None))[1] == "NewReplicaSetAvailable"
    )
    return found if done else None


def test_deployment_rollout_becomes_ready(k8s_api, k8s_namespace):
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    created = apps.create_namespaced_deployment(k8s_namespace, deployment("web", replicas=3))
    assert created.spec.strategy.rolling_update.max_surge == "25%"
    assert created.spec.progress_deadline_seconds == 600 and created.spec.revision_history_limit == 10
    done = wait_until(lambda: rolled_out(apps, k8s_namespace, "web"))
    assert done.status.ready_replicas == 3 and not done.status.unavailable_replicas
    assert conditions(done)["Available"] == (
        "True",
        "MinimumReplicasAvailable",
        "Deployment has minimum availability.",
    )
    (rs,) = apps.list_namespaced_replica_set(k8s_namespace).items
    pod_hash = rs.metadata.labels["pod-template-hash"]
    assert rs.metadata.name == f"web-{pod_hash}"
    assert conditions(done)["Progressing"] == (
        "True",
        "NewReplicaSetAvailable",
        f'ReplicaSet "{rs.metadata.name}" has successfully progressed.',
    )
    assert rs.spec.selector.match_labels == {"app": "web", "pod-template-hash": pod_hash}
    assert rs.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    assert done.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    assert rs.metadata.owner_references[0].kind == "Deployment" and rs.status.available_replicas == 3
    pods = core.list_namespaced_pod(k8s_namespace, label_selector="app=web").items
    assert len(pods) == 3
    assert all(p.metadata.name.startswith(f"{rs.metadata.name}-") for p in pods)
    assert all(p.metadata.owner_references[0].name == rs.metadata.name for p in pods)


def test_a_rollout_whose_pods_never_become_ready_exceeds_its_progress_deadline(k8s_api, k8s_namespace):
    apps = client.AppsV1Api(k8s_api)
    broken = template("broken", image="registry.example/missing:1", script={"fault": "ErrImagePull"})
    apps.create_namespaced_deployment(
        k8s_namespace, deployment("broken", replicas=1, template=broken, progressDeadlineSeconds=2)
    )
    stuck = wait_until(
        lambda: (
            (d := apps.read_namespaced_deployment("broken", k8s_namespace))
            and conditions(d).get("Progressing", (None, None))[1] == "ProgressDeadlineExceeded"
            and d
        ),
        timeout_s=10,
    )
    (rs,) = apps.list_namespaced_replica_set(k8s_namespace).items
    assert conditions(stuck)["Progressing"] == (
        "False",
        "ProgressDeadlineExceeded",
        f'ReplicaSet "{rs.metadata.name}" has timed out progressing.',
    )
    assert conditions(stuck)["Available"] == (
        "False",
        "MinimumReplicasUnavailable",
        "Deployment does not have minimum availability.",
    )
    assert not stuck.status.ready_replicas and stuck.status.unavailable_replicas == 1


def test_a_rolling_update_replaces_the_replica_set(k8s_api, k8s_namespace):
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    apps.create_namespaced_deployment(k8s_namespace, deployment("roll", replicas=4))
    first = wait_until(lambda: rolled_out(apps, k8s_namespace, "roll"))
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.28"}]}}}}
    apps.patch_namespaced_deployment("roll", k8s_namespace, patch)
    done = wait_until(
        lambda: (
            (d := rolled_out(apps, k8s_namespace, "roll"))
            and d.metadata.generation > first.metadata.generation
            and d
        )
    )
    sets = {
        rs.metadata.annotations["deployment.kubernetes.io/revision"]: rs
        for rs in apps.list_namespaced_replica_set(k8s_namespace).items
    }
    assert set(sets) == {"1", "2"}
    assert sets["1"].spec.replicas == 0 and sets["2"].spec.replicas == 4
    assert done.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    wait_until(
        lambda: (
            {
                p.spec.containers[0].image
                for p in core.list_namespaced_pod(k8s_namespace, label_selector="app=roll").items
            }
            == {"nginx:1.28"}
        )
    )
    scaled_events = [
        e.message
        for e in core.list_namespaced_event(k8s_namespace, field_selector="involvedObject.name=roll").items
    ]
    assert any(m.startswith(f"Scaled down replica set {sets['1'].metadata.name}") for m in scaled_events)


def test_deleting_a_deployment_removes_its_replica_sets_and_pods(k8s_api, k8s_namespace):
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    apps.create_namespaced_deployment(k8s_namespace, deployment("gone", replicas=2))
    wait_until(lambda: rolled_out(apps, k8s_namespace, "gone"))
    apps.delete_namespaced_deployment("gone", k8s_namespace)
    wait_until(lambda: not apps.list_namespaced_replica_set(k8s_namespace).items)
    wait_until(lambda: not core.list_namespaced_pod(k8s_namespace).items)


def test_daemon_set_runs_a_pod_on_each_eligible_node(k8s_api, k8s_namespace):
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    body = {
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template("agent")},
    }
    apps.create_namespaced_daemon_set(k8s_namespace, body)

    def settled():
        found = apps.read_namespaced_daemon_set("agent", k8s_namespace)
        status = found.status
        return found if status and status.desired_number_scheduled == 3 and status.number_ready == 3 else None

    found = wait_until(settled)
    assert found.status.number_available == 3 and found.status.updated_number_scheduled == 3
    nodes = sorted(
        p.spec.node_name for p in core.list_namespaced_pod(k8s_namespace, label_selector="app=agent").items
    )
    assert nodes == ["gpu-node-1", "gpu-node-2", "gpu-node-3"]  # the control plane's taint is not tolerated


def test_stateful_set_creates_ordered_pods_and_their_claims(k8s_api, k8s_namespace):
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    storage = client.StorageV1Api(k8s_api)
    class_name = f"fast-{k8s_namespace}"
    storage.create_storage_class({"metadata": {"name": class_name}, "provisioner": "seaweedfs-csi-driver"})
    try:
        body = {
            "metadata": {"name": "db"},
            "spec": {
                "replicas": 3,
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": template("db", script={"containers": {"web": {"readyAfterSeconds": 0.2}}}),
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "storageClassName": class_name,
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    }
                ],
            },
        }
        apps.create_namespaced_stateful_set(k8s_namespace, body)
        ready = wait_until(
            lambda: (
                (s := apps.read_namespaced_stateful_set("db", k8s_namespace)).status
                and s.status.ready_replicas == 3
                and s
            ),
            timeout_s=15,
        )
        assert (
            ready.status.current_revision == ready.status.update_revision
            and ready.status.updated_replicas == 3
        )
        pods = {
            p.metadata.name: p for p in core.list_namespaced_pod(k8s_namespace, label_selector="app=db").items
        }
        assert sorted(pods) == ["db-0", "db-1", "db-2"]
        started = [pods[f"db-{i}"].status.start_time for i in range(3)]
        assert started == sorted(started)  # OrderedReady: one after the other
        assert pods["db-1"].metadata.labels["apps.kubernetes.io/pod-index"] == "1"
        assert pods["db-1"].spec.hostname == "db-1" and pods["db-1"].spec.subdomain == "db"
        claims = {
            c.metadata.name: c for c in core.list_namespaced_persistent_volume_claim(k8s_namespace).items
        }
        assert sorted(claims) == ["data-db-0", "data-db-1", "data-db-2"]
        assert all(c.status.phase == "Bound" for c in claims.values())
        volume = core.read_persistent_volume(claims["data-db-0"].spec.volume_name)
        assert volume.metadata.annotations["pv.kubernetes.io/provisioned-by"] == "seaweedfs-csi-driver"
        assert volume.spec.claim_ref.name == "data-db-0" and volume.status.phase == "Bound"
    finally:
        storage.delete_storage_class(class_name)


def test_a_claim_binds_to_the_smallest_matching_volume(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    class_name = f"manual-{k8s_namespace}"
    volumes = []
    for name, size, modes in (
        ("big", "10Gi", ["ReadWriteOnce"]),
        ("small", "2Gi", ["ReadWriteOnce"]),
        ("rox", "1Gi", ["ReadOnlyMany"]),
    ):
        volume_name = f"{name}-{k8s_namespace}"
        core.create_persistent_volume(
            {
                "metadata": {"name": volume_name},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": modes,
                    "storageClassName": class_name,
                    "hostPath": {"path": f"/tmp/{volume_name}"},
                },
            }
        )
        volumes.append(volume_name)
    try:
        wait_until(lambda: core.read_persistent_volume(volumes[0]).status.phase == "Available")
        core.create_namespaced_persistent_volume_claim(
            k8s_namespace,
            {
                "metadata": {"name": "claim"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": class_name,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        claim = wait_until(
            lambda: (
                (c := core.read_namespaced_persistent_volume_claim("claim", k8s_namespace)).status.phase
                == "Bound"
                and c
            )
        )
        assert claim.spec.volume_name == f"small-{k8s_namespace}"
        assert claim.status.capacity == {"storage": "2Gi"} and claim.status.access_modes == ["ReadWriteOnce"]
        assert claim.metadata.annotations["pv.kubernetes.io/bind-completed"] == "yes"
        volume = core.read_persistent_volume(f"small-{k8s_namespace}")
        assert volume.status.phase == "Bound" and volume.spec.claim_ref.uid == claim.metadata.uid
        core.delete_namespaced_persistent_volume_claim("claim", k8s_namespace)
        wait_until(lambda: core.read_persistent_volume(f"small-{k8s_namespace}").status.phase == "Released")
    finally:
        for name in volumes:
            core.delete_persistent_volume(name)


def test_wait_for_first_consumer_binds_when_a_pod_is_scheduled(k8s_api, k8s_namespace):
    core, storage = client.CoreV1Api(k8s_api), client.StorageV1Api(k8s_api)
    class_name = f"local-{k8s_namespace}"
    storage.create_storage_class(
        {
            "metadata": {"name": class_name},
            "provisioner": "rancher.io/local-path",
            "volumeBindingMode": "WaitForFirstConsumer",
        }
    )
    try:
        claim = {
            "metadata": {"name": "later"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": class_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
        core.create_namespaced_persistent_volume_claim(k8s_namespace, claim)
        wait_until(
            lambda: any(
                e.reason == "WaitForFirstConsumer"
                for e in core.list_namespaced_event(
                    k8s_namespace, field_selector="involvedObject.name=later"
                ).items
            )
        )
        assert core.read_namespaced_persistent_volume_claim("later", k8s_namespace).status.phase == "Pending"
        pod = {
            "metadata": {"name": "consumer"},
            "spec": {
                "tolerations": [GPU_TOLERATION],
                "containers": [{"name": "main", "image": "busybox:1.36"}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "later"}}],
            },
        }
        core.create_namespaced_pod(k8s_namespace, pod)
        running = wait_until(
            lambda: (p := core.read_namespaced_pod("consumer", k8s_namespace)).status.phase == "Running" and p
        )
        bound = core.read_namespaced_persistent_volume_claim("later", k8s_namespace)
        assert bound.status.phase == "Bound"
        assert bound.metadata.annotations["volume.kubernetes.io/selected-node"] == running.spec.node_name
    finally:
        storage.delete_storage_class(class_name)


def test_a_pod_with_a_missing_claim_is_unschedulable(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    pod = {
        "metadata": {"name": "orphan"},
        "spec": {
            "tolerations": [GPU_TOLERATION],
            "containers": [{"name": "main", "image": "busybox:1.36"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "nope"}}],
        },
    }
    core.create_namespaced_pod(k8s_namespace, pod)
    cond = wait_until(
        lambda: next(
            (
                c
                for c in core.read_namespaced_pod("orphan", k8s_namespace).status.conditions or []
                if c.type == "PodScheduled"
            ),
            None,
        )
    )
    assert cond.message == (
        '0/4 nodes are available: persistentvolumeclaim "nope" not found. no new claims to deallocate, '
        "preemption: "
        "0/4 nodes are available: 4 Preemption is not helpful for scheduling."
    )


def failed_creates(core, namespace, kind):
    return [
        e
        for e in core.list_namespaced_event(namespace).items
        if e.reason == "FailedCreate" and e.involved_object.kind == kind
    ]


def test_refused_pod_creates_are_failed_create_events_then_retried(k8s_api, k8s_namespace):
    """The ReplicaSet and StatefulSet controllers' FailedCreate Events (their own wording) while the
    ServiceAccount admission refuses their pods; once the account exists, their retries create them."""
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    account = {"serviceAccountName": "runner"}
    apps.create_namespaced_deployment(
        k8s_namespace, deployment("web", replicas=1, template=template("web", **account))
    )
    apps.create_namespaced_stateful_set(
        k8s_namespace,
        {
            "metadata": {"name": "db"},
            "spec": {
                "replicas": 1,
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": template("db", **account),
            },
        },
    )
    (rs_event,) = wait_until(lambda: failed_creates(core, k8s_namespace, "ReplicaSet"))
    why = f'error looking up service account {k8s_namespace}/runner: serviceaccount "runner" not found'
    rs_name = rs_event.involved_object.name
    assert rs_event.type == "Warning" and rs_event.source.component == "replicaset-controller"
    assert rs_event.message == f'Error creating: pods "{rs_name}-" is forbidden: {why}'
    (sts_event,) = wait_until(lambda: failed_creates(core, k8s_namespace, "StatefulSet"))
    assert sts_event.type == "Warning" and sts_event.source.component == "statefulset-controller"
    assert (
        sts_event.message
        == f'create Pod db-0 in StatefulSet db failed error: pods "db-0" is forbidden: {why}'
    )
    assert not core.list_namespaced_pod(k8s_namespace).items

    core.create_namespaced_service_account(k8s_namespace, {"metadata": {"name": "runner"}})
    wait_until(lambda: rolled_out(apps, k8s_namespace, "web"), timeout_s=30)
    wait_until(lambda: apps.read_namespaced_stateful_set("db", k8s_namespace).status.ready_replicas == 1)
