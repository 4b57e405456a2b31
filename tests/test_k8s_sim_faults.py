"""Faults of the simulated API server: 500s, 429 with Retry-After, slow answers, for chosen paths and verbs.

The answers are the real API server's: a 500 is a Status with reason InternalError ("Internal error occurred:
..."), a 429 from API Priority and Fairness is a Status with reason TooManyRequests, a `Retry-After` header
`details.retryAfterSeconds` (https://kubernetes.io/docs/concepts/cluster-administration/flow-control/).
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from kubernetes import client
from kubernetes.client.rest import ApiException


def test_the_next_requests_answer_500_then_the_real_answer(k8s_api, k8s_namespace, k8s_sim):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(k8s_namespace, {"metadata": {"name": "c"}})
    k8s_sim.fault(
        f"/namespaces/{k8s_namespace}/configmaps/c$",
        verbs=("get",),
        status=500,
        count=2,
        message="etcd is away",
    )
    for _ in range(2):
        with pytest.raises(ApiException) as caught:
            core.read_namespaced_config_map("c", k8s_namespace)
        assert caught.value.status == 500
        assert json.loads(caught.value.body) == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Internal error occurred: etcd is away",
            "reason": "InternalError",
            "details": {"causes": [{"message": "etcd is away"}]},
            "code": 500,
        }
    assert core.read_namespaced_config_map("c", k8s_namespace).metadata.name == "c"
    state = k8s_sim.control("GET", "")
    assert state["faults"][0]["hits"] == 2


def test_throttling_answers_429_with_retry_after(k8s_cluster, k8s_api, k8s_namespace, k8s_sim):
    k8s_sim.fault(f"/namespaces/{k8s_namespace}/pods", status=429, retry_after_s=2, count=1)
    url = f"{k8s_cluster.url}/api/v1/namespaces/{k8s_namespace}/pods"
    throttled = requests.get(url, timeout=5)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "2"
    assert throttled.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Too many requests, please try again later.",
        "reason": "TooManyRequests",
        "details": {"retryAfterSeconds": 2},
        "code": 429,
    }
    assert requests.get(url, timeout=5).status_code == 200


def test_faults_match_verbs(k8s_api, k8s_namespace, k8s_sim):
    core = client.CoreV1Api(k8s_api)
    k8s_sim.fault("/configmaps", verbs=("create",), status=500, count=None)
    core.list_namespaced_config_map(k8s_namespace)  # a list is not a create
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_config_map(k8s_namespace, {"metadata": {"name": "x"}})
    assert caught.value.status == 500
    with pytest.raises(ApiException):
        core.create_namespaced_config_map(k8s_namespace, {"metadata": {"name": "y"}})
    k8s_sim.control("DELETE", "faults")
    core.create_namespaced_config_map(k8s_namespace, {"metadata": {"name": "z"}})
    assert [c.metadata.name for c in core.list_namespaced_config_map(k8s_namespace).items] == ["z"]


def test_slow_answers(k8s_api, k8s_namespace, k8s_sim):
    core = client.CoreV1Api(k8s_api)
    k8s_sim.fault(f"/namespaces/{k8s_namespace}/secrets", verbs=("list",), delay_s=0.6, count=1)
    started = time.monotonic()
    core.list_namespaced_secret(k8s_namespace)
    assert time.monotonic() - started >= 0.6
    started = time.monotonic()
    core.list_namespaced_secret(k8s_namespace)
    assert time.monotonic() - started < 0.5


def test_a_watch_can_fail_too(k8s_cluster, k8s_namespace, k8s_sim):
    k8s_sim.fault("/configmaps", verbs=("watch",), status=500)
    url = f"{k8s_cluster.url}/api/v1/namespaces/{k8s_namespace}/configmaps"
    assert requests.get(url, params={"watch": "true", "timeoutSeconds": "1"}, timeout=5).status_code == 500
    assert requests.get(url, params={"watch": "true", "timeoutSeconds": "1"}, timeout=5).status_code == 200


def test_control_endpoint_refuses_bad_rules(k8s_cluster):
    bad = requests.post(
        f"{k8s_cluster.url}/_sim/faults", json={"verbs": ["frobnicate"], "status": 500}, timeout=5
    )
    assert bad.status_code == 400 and "unknown verb" in bad.json()["error"]
    empty = requests.post(f"{k8s_cluster.url}/_sim/faults", json={"path": "/x"}, timeout=5)
    assert empty.status_code == 400
    missing = requests.post(f"{k8s_cluster.url}/_sim/nodes/no-such-node/lose", json={}, timeout=5)
    assert missing.status_code == 404
