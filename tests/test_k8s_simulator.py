"""The Kubernetes API simulator (tests/k8s_sim), through the official `kubernetes` client and raw HTTP.

What each test expects is what https://kubernetes.io/docs/reference/using-api/api-concepts/ specifies (status
codes, Status bodies, resourceVersion semantics, watch) and what the real server answers (messages, reasons).
"""

from __future__ import annotations

import json
import uuid

import pytest
import requests
from kubernetes import client, watch
from kubernetes.client.rest import ApiException


@pytest.fixture
def namespace(k8s_api) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(k8s_api).create_namespace({"metadata": {"name": name}})
    return name


def _pod(name: str, labels: dict | None = None, **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}], **spec},
    }


def _status(exc: ApiException) -> dict:
    return json.loads(exc.body)


def test_discovery(k8s_cluster, k8s_api):
    assert client.VersionApi(k8s_api).get_code().git_version == "v1.37.0"
    core = {r.name: r for r in client.CoreV1Api(k8s_api).get_api_resources().resources}
    assert core["pods"].kind == "Pod" and core["pods"].namespaced and "po" in core["pods"].short_names
    assert {
        "pods/log",
        "pods/status",
        "namespaces",
        "nodes",
        "services",
        "configmaps",
        "secrets",
        "serviceaccounts",
        "persistentvolumes",
        "persistentvolumeclaims",
        "events",
    } <= set(core)
    assert not core["nodes"].namespaced
    assert set(core["pods"].verbs) >= {"create", "get", "list", "watch", "patch", "update", "delete"}
    groups = {g.name: g for g in client.ApisApi(k8s_api).get_api_versions().groups}
    assert {
        "apps",
        "batch",
        "rbac.authorization.k8s.io",
        "networking.k8s.io",
        "policy",
        "storage.k8s.io",
    } <= set(groups)
    expected = {
        "apps/v1": {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet"},
        "batch/v1": {"Job"},
        "rbac.authorization.k8s.io/v1": {"Role", "RoleBinding"},
        "networking.k8s.io/v1": {"NetworkPolicy", "Ingress"},
        "policy/v1": {"PodDisruptionBudget"},
        "storage.k8s.io/v1": {"StorageClass", "CSIDriver"},
    }
    for group_version, kinds in expected.items():
        listed = requests.get(f"{k8s_cluster.url}/apis/{group_version}", timeout=5).json()
        assert listed["kind"] == "APIResourceList" and listed["groupVersion"] == group_version
        assert kinds <= {r["kind"] for r in listed["resources"]}
    assert requests.get(f"{k8s_cluster.url}/api", timeout=5).json()["versions"] == ["v1"]
    missing = requests.get(f"{k8s_cluster.url}/apis/nosuch.example.com/v1", timeout=5)
    assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"


def test_create_get_and_metadata(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    created = core.create_namespaced_pod(namespace, _pod("p1"))
    assert created.metadata.uid and created.metadata.creation_timestamp and created.metadata.resource_version
    assert created.metadata.generation == 1 and created.status.phase == "Pending"
    fetched = core.read_namespaced_pod("p1", namespace)
    assert fetched.metadata.uid == created.metadata.uid
    generated = core.create_namespaced_config_map(
        namespace, {"metadata": {"generateName": "cm-"}, "data": {"a": "1"}}
    )
    assert generated.metadata.name.startswith("cm-") and len(generated.metadata.name) == len("cm-") + 5
    later = core.create_namespaced_config_map(namespace, {"metadata": {"name": "later"}})
    assert int(later.metadata.resource_version) > int(generated.metadata.resource_version)


def test_not_found_and_already_exists(k8s_api, namespace):
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    with pytest.raises(ApiException) as caught:
        core.read_namespaced_pod("nope", namespace)
    assert caught.value.status == 404
    assert _status(caught.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "kind": "pods"},
        "code": 404,
    }
    job = {
        "metadata": {"name": "j"},
        "spec": {
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
            }
        },
    }
    batch.create_namespaced_job(namespace, job)
    with pytest.raises(ApiException) as caught:
        batch.create_namespaced_job(namespace, job)
    body = _status(caught.value)
    assert caught.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["message"] == 'jobs.batch "j" already exists'
    assert body["details"] == {"name": "j", "group": "batch", "kind": "jobs"}
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod("no-such-namespace", _pod("p"))
    assert caught.value.status == 404
    assert _status(caught.value)["message"] == 'namespaces "no-such-namespace" not found'


def test_replace_conflict_on_stale_resource_version(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    first = core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"}, "data": {"k": "1"}})
    first.data = {"k": "2"}
    second = core.replace_namespaced_config_map("c", namespace, first)
    assert second.data == {"k": "2"}
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    first.data = {"k": "3"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as caught:
        core.replace_namespaced_config_map("c", namespace, first)
    body = _status(caught.value)
    assert caught.value.status == 409 and body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on configmaps "c": the object has been modified; please apply your '
        "changes to the latest version and try again"
    )
    assert core.read_namespaced_config_map("c", namespace).data == {"k": "2"}


def test_generation_follows_spec_changes_only(k8s_api, namespace):
    apps = client.AppsV1Api(k8s_api)
    deployment = {
        "metadata": {"name": "d", "labels": {"a": "1"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "d"}},
            "template": {
                "metadata": {"labels": {"app": "d"}},
                "spec": {"containers": [{"name": "c", "image": "x:1"}]},
            },
        },
    }
    created = apps.create_namespaced_deployment(namespace, deployment)
    assert created.metadata.generation == 1
    labelled = apps.patch_namespaced_deployment(
        "d", namespace, {"metadata": {"labels": {"b": "2"}}}, _content_type="application/merge-patch+json"
    )
    assert labelled.metadata.generation == 1 and labelled.metadata.labels == {"a": "1", "b": "2"}
    scaled = apps.patch_namespaced_deployment(
        "d", namespace, {"spec": {"replicas": 3}}, _content_type="application/merge-patch+json"
    )
    assert scaled.metadata.generation == 2 and scaled.spec.replicas == 3


def test_patch_merge_and_json_patch(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}})
    merged = core.patch_namespaced_config_map(
        "c", namespace, {"data": {"a": None, "c": "3"}}, _content_type="application/merge-patch+json"
    )
    assert merged.data == {"b": "2", "c": "3"}
    patched = core.patch_namespaced_config_map(
        "c",
        namespace,
        [{"op": "replace", "path": "/data/b", "value": "20"}, {"op": "add", "path": "/data/d", "value": "4"}],
    )
    assert patched.data == {"b": "20", "c": "3", "d": "4"}
    with pytest.raises(ApiException) as caught:
        core.patch_namespaced_config_map("c", namespace, [{"op": "test", "path": "/data/b", "value": "no"}])
    assert caught.value.status == 422


def test_delete(k8s_cluster, k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(namespace, _pod("p"))
    deleted = requests.delete(f"{k8s_cluster.url}/api/v1/namespaces/{namespace}/pods/p", timeout=5)
    assert deleted.status_code == 200 and deleted.json()["kind"] == "Pod"  # pods answer with the object
    created = core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"}})
    status = requests.delete(
        f"{k8s_cluster.url}/api/v1/namespaces/{namespace}/configmaps/c", timeout=5
    ).json()
    assert status["kind"] == "Status" and status["status"] == "Success"
    assert status["details"] == {"name": "c", "kind": "configmaps", "uid": created.metadata.uid}
    with pytest.raises(ApiException) as caught:
        core.delete_namespaced_config_map("c", namespace)
    assert caught.value.status == 404


@pytest.mark.parametrize(
    ("create", "field", "reason"),
    [
        (
            lambda api, ns: client.CoreV1Api(api).create_namespaced_pod(
                ns, {"metadata": {"name": "bad"}, "spec": {"containers": [{"name": "c"}]}}
            ),
            "spec.containers[0].image",
            "FieldValueRequired",
        ),
        (
            lambda api, ns: client.CoreV1Api(api).create_namespaced_pod(
                ns, {"metadata": {"name": "bad"}, "spec": {}}
            ),
            "spec.containers",
            "FieldValueRequired",
        ),
        (
            lambda api, ns: client.BatchV1Api(api).create_namespaced_job(
                ns,
                {
                    "metadata": {"name": "bad"},
                    "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}},
                },
            ),
            "spec.template.spec.restartPolicy",
            "FieldValueNotSupported",
        ),
        (
            lambda api, ns: client.CoreV1Api(api).create_namespaced_config_map(
                ns, {"metadata": {"name": "Bad_Name"}}
            ),
            "metadata.name",
            "FieldValueInvalid",
        ),
    ],
)
def test_invalid_objects_get_422_naming_the_field(k8s_api, namespace, create, field, reason):
    with pytest.raises(ApiException) as caught:
        create(k8s_api, namespace)
    body = _status(caught.value)
    assert caught.value.status == 422 and body["reason"] == "Invalid"
    cause = body["details"]["causes"][0]
    assert (cause["field"], cause["reason"]) == (field, reason)
    assert body["message"].startswith(f"{body['details']['kind']}") and field in body["message"]


def test_unknown_fields_by_field_validation(k8s_cluster, namespace):
    url = f"{k8s_cluster.url}/api/v1/namespaces/{namespace}/pods"
    pod = _pod("u")
    pod["spec"]["nodeSelectr"] = {"a": "b"}
    strict = requests.post(url, json=pod, params={"fieldValidation": "Strict"}, timeout=5)
    assert strict.status_code == 400 and strict.json()["reason"] == "BadRequest"
    assert strict.json()["message"] == 'strict decoding error: unknown field "spec.nodeSelectr"'
    warned = requests.post(url, json=pod, params={"fieldValidation": "Warn"}, timeout=5)
    assert warned.status_code == 201 and "nodeSelectr" not in warned.json()["spec"]
    assert (
        'unknown field \\"spec.nodeSelectr\\"' in warned.headers["Warning"]
        or "spec.nodeSelectr" in warned.headers["Warning"]
    )


def test_apply_bodies_in_yaml_and_in_json_are_the_same_object(k8s_cluster, namespace):
    """An apply patch is YAML, of which JSON is a part: block YAML (what an operator's file holds) and JSON
    (what the Python client sends) create the same ConfigMap; a body that is neither is a 400 naming YAML."""
    url = f"{k8s_cluster.url}/api/v1/namespaces/{namespace}/configmaps"
    headers = {"Content-Type": "application/apply-patch+yaml"}
    block = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  key: 'on'\n"
    as_json = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "from-json"},
        "data": {"key": "on"},
    }
    made = [
        requests.patch(
            f"{url}/from-yaml", data=block, params={"fieldManager": "t"}, headers=headers, timeout=5
        ),
        requests.patch(
            f"{url}/from-json",
            data=json.dumps(as_json),
            params={"fieldManager": "t"},
            headers=headers,
            timeout=5,
        ),
    ]
    assert [r.status_code for r in made] == [201, 201]
    assert [r.json()["data"] for r in made] == [{"key": "on"}, {"key": "on"}]
    broken = requests.patch(
        f"{url}/broken", data="a: [1", params={"fieldManager": "t"}, headers=headers, timeout=5
    )
    assert broken.status_code == 400 and "error decoding YAML" in broken.json()["message"]


def test_label_and_field_selectors(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(namespace, _pod("a", {"app": "x", "tier": "web"}))
    core.create_namespaced_pod(namespace, _pod("b", {"app": "y", "tier": "db"}))
    core.create_namespaced_pod(namespace, _pod("c", {"app": "z"}))

    def names(**kw):
        return sorted(p.metadata.name for p in core.list_namespaced_pod(namespace, **kw).items)

    assert names(label_selector="app=x") == ["a"]
    assert names(label_selector="app==y") == ["b"]
    assert names(label_selector="app!=x") == ["b", "c"]
    assert names(label_selector="app in (x, z)") == ["a", "c"]
    assert names(label_selector="app notin (x)") == ["b", "c"]
    assert names(label_selector="tier") == ["a", "b"]
    assert names(label_selector="!tier") == ["c"]
    assert names(label_selector="tier,app!=y") == ["a"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="status.phase=Pending,metadata.name!=a") == ["b", "c"]
    listed = core.list_namespaced_pod(namespace)
    assert int(listed.metadata.resource_version) >= max(
        int(p.metadata.resource_version) for p in listed.items
    )
    with pytest.raises(ApiException) as caught:
        core.list_namespaced_pod(namespace, field_selector="spec.nope=1")
    assert caught.value.status == 400
    everywhere = core.list_pod_for_all_namespaces(field_selector=f"metadata.namespace={namespace}")
    assert len(everywhere.items) == 3
    first = core.list_namespaced_pod(namespace, limit=2)
    assert [p.metadata.name for p in first.items] == ["a", "b"] and first.metadata._continue
    rest = core.list_namespaced_pod(namespace, limit=2, _continue=first.metadata._continue)
    assert [p.metadata.name for p in rest.items] == ["c"] and not rest.metadata._continue


def test_namespace_deletion_removes_its_content(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"}})
    core.delete_namespace(namespace)
    with pytest.raises(ApiException) as caught:
        core.read_namespace(namespace)
    assert caught.value.status == 404
    assert (
        core.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={namespace}").items == []
    )


def test_watch_from_resource_version(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    start = core.list_namespaced_config_map(namespace).metadata.resource_version
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "w"}, "data": {"n": "1"}})
    core.patch_namespaced_config_map(
        "w", namespace, {"data": {"n": "2"}}, _content_type="application/merge-patch+json"
    )
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "other", "labels": {"skip": "yes"}}})
    core.delete_namespaced_config_map("w", namespace)
    seen = []
    for event in watch.Watch().stream(
        core.list_namespaced_config_map,
        namespace,
        resource_version=start,
        label_selector="!skip",
        timeout_seconds=1,
    ):
        seen.append((event["type"], event["object"].metadata.name, event["object"].data))
    assert seen == [("ADDED", "w", {"n": "1"}), ("MODIFIED", "w", {"n": "2"}), ("DELETED", "w", {"n": "2"})]


def test_watch_streams_live_changes_and_bookmarks(k8s_cluster, k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "before"}})
    with requests.get(
        f"{k8s_cluster.url}/api/v1/namespaces/{namespace}/configmaps",
        params={"watch": "true", "timeoutSeconds": "2", "allowWatchBookmarks": "true"},
        stream=True,
        timeout=10,
    ) as response:
        lines = response.iter_lines()
        first = json.loads(next(lines))
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "before")
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "after"}})
        second = json.loads(next(lines))
        assert (second["type"], second["object"]["metadata"]["name"]) == ("ADDED", "after")
        rest = [json.loads(line) for line in lines if line]
    assert rest and rest[-1]["type"] == "BOOKMARK" and rest[-1]["object"]["kind"] == "ConfigMap"
    assert int(rest[-1]["object"]["metadata"]["resourceVersion"]) >= int(
        second["object"]["metadata"]["resourceVersion"]
    )
