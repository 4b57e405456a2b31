"""The kubelet stand-in, pods/log and pod faults, through the official client and raw HTTP.

What each test expects is what the Kubernetes documentation specifies:
https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/ (phases, container states, conditions,
restart policy, graceful termination),
https://kubernetes.io/docs/tasks/debug/debug-application/determine-reason-pod-failure/ (termination messages,
FallbackToLogsOnError), https://kubernetes.io/docs/concepts/containers/images/ (image pull
back-off), https://kubernetes.io/docs/concepts/scheduling-eviction/node-pressure-eviction/ and
https://kubernetes.io/docs/concepts/workloads/pods/disruptions/#pod-disruption-conditions (evictions),
https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/#taint-based-evictions (node
loss), and the pods/log parameters of https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
import time

import pytest
import requests
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.fixtures.kubernetes import wait_until
from tests.k8s_sim.kubelet import SCRIPT_ANNOTATION

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def pod(name: str, script: dict | None = None, restart: str = "Never", containers=None, **spec) -> dict:
    body = {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "tolerations": [GPU_TOLERATION],
            "containers": containers
            or [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", "true"]}],
            **spec,
        },
    }
    if script is not None:
        body["metadata"]["annotations"] = {SCRIPT_ANNOTATION: json.dumps(script)}
    return body


def phase(core, namespace, name, *wanted):
    found = core.read_namespaced_pod(name, namespace)
    return found if found.status.phase in wanted else None


def log_text(core, namespace, name) -> str:
    """The pod's log, or "" while its container has not started (the API answers 400 then)."""
    try:
        return core.read_namespaced_pod_log(name, namespace, _preload_content=False).data.decode()
    except ApiException:
        return ""


def conditions(found) -> dict:
    return {c.type: (c.status, c.reason) for c in found.status.conditions or []}


def test_a_pod_goes_through_its_phases_with_real_statuses(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    body = pod(
        "lifecycle",
        {
            "containers": {
                "main": {"durationSeconds": 0.4, "logs": ["working"]},
                "setup": {"durationSeconds": 0.2},
            }
        },
        initContainers=[{"name": "setup", "image": "busybox:1.36"}],
    )
    start = core.list_namespaced_pod(k8s_namespace).metadata.resource_version
    core.create_namespaced_pod(k8s_namespace, body)
    done = wait_until(lambda: phase(core, k8s_namespace, "lifecycle", "Succeeded"))
    seen = []
    for event in watch.Watch().stream(
        core.list_namespaced_pod, k8s_namespace, resource_version=start, timeout_seconds=1
    ):
        obj = event["object"]
        states = [
            next(k for k, v in c.state.to_dict().items() if v) for c in obj.status.container_statuses or []
        ]
        seen.append((obj.status.phase, tuple(states)))
    phases = [p for p, _ in seen]
    assert phases.index("Pending") < phases.index("Running") < phases.index("Succeeded")
    assert ("Pending", ("waiting",)) in seen and ("Running", ("running",)) in seen
    init = done.status.init_container_statuses[0]
    assert init.state.terminated.exit_code == 0 and init.state.terminated.reason == "Completed"
    main = done.status.container_statuses[0]
    terminated = main.state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert terminated.started_at <= terminated.finished_at
    assert main.container_id.startswith("containerd://") and main.container_id == terminated.container_id
    assert main.image == "docker.io/library/busybox:1.36" and main.image_id.startswith(
        "docker.io/library/busybox@sha256:"
    )
    assert conditions(done) == {
        "PodReadyToStartContainers": ("False", None),
        "Initialized": ("True", "PodCompleted"),
        "Ready": ("False", "PodCompleted"),
        "ContainersReady": ("False", "PodCompleted"),
        "PodScheduled": ("True", None),
    }
    node = core.read_node(done.spec.node_name)
    assert ipaddress.ip_address(done.status.pod_ip) in ipaddress.ip_network(node.spec.pod_cidr)
    assert done.status.host_ip == next(a.address for a in node.status.addresses if a.type == "InternalIP")
    assert done.status.qos_class == "BestEffort" and done.status.start_time is not None
    reasons = [e.reason for e in core.list_namespaced_event(k8s_namespace).items]
    assert {"Scheduled", "Pulled", "Created", "Started"} <= set(reasons)


def test_a_running_pod_is_ready_and_its_init_containers_went_first(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    body = pod(
        "server",
        {"containers": {"prepare": {"durationSeconds": 0.3}}},
        restart="Always",
        initContainers=[{"name": "prepare", "image": "busybox:1.36"}],
        containers=[{"name": "web", "image": "nginx:1.27", "readinessProbe": {"httpGet": {"port": 80}}}],
    )
    core.create_namespaced_pod(k8s_namespace, body)
    initializing = wait_until(
        lambda: (
            (p := core.read_namespaced_pod("server", k8s_namespace)).status.init_container_statuses
            and p.status.init_container_statuses[0].state.running
            and p
        )
    )
    assert initializing.status.phase == "Pending"
    assert initializing.status.container_statuses[0].state.waiting.reason == "PodInitializing"
    assert conditions(initializing)["Initialized"] == ("False", "ContainersNotInitialized")
    ready = wait_until(
        lambda: (
            (p := phase(core, k8s_namespace, "server", "Running"))
            and conditions(p)["Ready"][0] == "True"
            and p
        )
    )
    assert conditions(ready)["ContainersReady"] == ("True", None)
    assert ready.status.container_statuses[0].ready and ready.status.container_statuses[0].started


def test_a_failing_container_and_its_termination_message(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    written = pod("written", {"exitCode": 3, "logs": ["a", "b"], "terminationMessage": "the file's content"})
    core.create_namespaced_pod(k8s_namespace, written)
    fallback = pod(
        "fallback",
        {"exitCode": 2, "logs": [f"line {i}" for i in range(100)], "durationSeconds": 0.1},
        containers=[
            {"name": "main", "image": "busybox:1.36", "terminationMessagePolicy": "FallbackToLogsOnError"}
        ],
    )
    core.create_namespaced_pod(k8s_namespace, fallback)
    silent = pod("silent", {"exitCode": 1, "logs": ["nothing kept"]})
    core.create_namespaced_pod(k8s_namespace, silent)
    for name in ("written", "fallback", "silent"):
        wait_until(lambda name=name: phase(core, k8s_namespace, name, "Failed"))
    terminated = (
        core.read_namespaced_pod("written", k8s_namespace).status.container_statuses[0].state.terminated
    )
    assert (terminated.exit_code, terminated.reason, terminated.message) == (3, "Error", "the file's content")
    terminated = (
        core.read_namespaced_pod("fallback", k8s_namespace).status.container_statuses[0].state.terminated
    )
    # FallbackToLogsOnError: the log's last 80 lines (2048 bytes at most).
    assert terminated.message == "\n".join(f"line {i}" for i in range(20, 100))
    terminated = (
        core.read_namespaced_pod("silent", k8s_namespace).status.container_statuses[0].state.terminated
    )
    assert terminated.message is None and terminated.exit_code == 1


def test_oom_killed(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(k8s_namespace, pod("oom", {"fault": "OOMKilled", "durationSeconds": 0.1}))
    failed = wait_until(lambda: phase(core, k8s_namespace, "oom", "Failed"))
    terminated = failed.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")


def test_image_pull_failure_backs_off_and_the_pod_stays_pending(k8s_api, k8s_namespace, k8s_cluster):
    core = client.CoreV1Api(k8s_api)
    body = pod(
        "nopull", {"fault": "ErrImagePull"}, containers=[{"name": "main", "image": "registry.example/nope:1"}]
    )
    core.create_namespaced_pod(k8s_namespace, body)

    def waiting(reason):
        found = core.read_namespaced_pod("nopull", k8s_namespace)
        state = (found.status.container_statuses or [None])[0]
        return found if state and state.state.waiting and state.state.waiting.reason == reason else None

    first = wait_until(lambda: waiting("ErrImagePull"))
    assert "registry.example/nope:1" in first.status.container_statuses[0].state.waiting.message
    later = wait_until(lambda: waiting("ImagePullBackOff"))
    assert later.status.phase == "Pending"
    assert later.status.container_statuses[0].state.waiting.message.startswith(
        'Back-off pulling image "registry.example/nope:1": ErrImagePull: '
    )
    answer = requests.get(f"{k8s_cluster.url}/api/v1/namespaces/{k8s_namespace}/pods/nopull/log", timeout=5)
    assert answer.status_code == 400
    assert (
        answer.json()["message"]
        == 'container "main" in pod "nopull" is waiting to start: trying and failing to pull image'
    )
    messages = {(e.reason, e.message) for e in core.list_namespaced_event(k8s_namespace).items}
    assert ("Failed", "Error: ImagePullBackOff") in messages and (
        "BackOff",
        'Back-off pulling image "registry.example/nope:1"',
    ) in messages
    time.sleep(0.5)
    assert core.read_namespaced_pod("nopull", k8s_namespace).status.phase == "Pending"


def test_kubelet_eviction_fails_the_pod_with_a_disruption_condition(k8s_api, k8s_namespace, k8s_sim):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(k8s_namespace, pod("scripted", {"evictAfterSeconds": 0.3}, restart="Always"))
    core.create_namespaced_pod(k8s_namespace, pod("on-demand", restart="Always"))
    wait_until(lambda: phase(core, k8s_namespace, "on-demand", "Running"))
    k8s_sim.evict(k8s_namespace, "on-demand", "The node was low on resource: ephemeral-storage. ")
    for name in ("scripted", "on-demand"):
        failed = wait_until(lambda name=name: phase(core, k8s_namespace, name, "Failed"))
        assert failed.status.reason == "Evicted"
        assert failed.status.message.startswith("The node was low on resource: ")
        cond = next(c for c in failed.status.conditions if c.type == "DisruptionTarget")
        assert (cond.status, cond.reason) == ("True", "TerminationByKubelet")
        assert failed.status.container_statuses[0].state.terminated.exit_code == 137


def test_eviction_api_respects_disruption_budgets(k8s_api, k8s_namespace):
    core, policy = client.CoreV1Api(k8s_api), client.PolicyV1Api(k8s_api)
    body = pod("guarded", restart="Always")
    body["metadata"]["labels"] = {"app": "guarded"}
    core.create_namespaced_pod(k8s_namespace, body)
    wait_until(lambda: phase(core, k8s_namespace, "guarded", "Running"))
    policy.create_namespaced_pod_disruption_budget(
        k8s_namespace,
        {
            "metadata": {"name": "keep"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}},
        },
    )
    wait_until(
        lambda: (
            (policy.read_namespaced_pod_disruption_budget("keep", k8s_namespace).status or {})
            and policy.read_namespaced_pod_disruption_budget("keep", k8s_namespace).status.current_healthy
            == 1
        )
    )
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "guarded"}}
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod_eviction("guarded", k8s_namespace, eviction)
    assert caught.value.status == 429
    assert (
        json.loads(caught.value.body)["message"]
        == "Cannot evict pod as it would violate the pod's disruption budget."
    )
    policy.delete_namespaced_pod_disruption_budget("keep", k8s_namespace)
    start = core.read_namespaced_pod("guarded", k8s_namespace).metadata.resource_version
    core.create_namespaced_pod_eviction("guarded", k8s_namespace, eviction)
    wait_until(
        lambda: not core.list_namespaced_pod(k8s_namespace, field_selector="metadata.name=guarded").items
    )
    marked = [
        c
        for event in watch.Watch().stream(
            core.list_namespaced_pod, k8s_namespace, resource_version=start, timeout_seconds=1
        )
        for c in event["object"].status.conditions or []
        if c.type == "DisruptionTarget"
    ]
    assert (marked[0].reason, marked[0].message) == ("EvictionByEvictionAPI", "Eviction API: evicting")


def test_logs_follow_streams_until_the_container_terminates(k8s_api, k8s_namespace, k8s_cluster):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(
        k8s_namespace, pod("talker", {"logs": ["one", "two", "three", "four"], "durationSeconds": 1.2})
    )
    wait_until(lambda: phase(core, k8s_namespace, "talker", "Running"))
    started = time.monotonic()
    arrivals = []
    with requests.get(
        f"{k8s_cluster.url}/api/v1/namespaces/{k8s_namespace}/pods/talker/log",
        params={"follow": "true"},
        stream=True,
        timeout=10,
    ) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        for line in response.iter_lines():
            arrivals.append((line.decode(), time.monotonic() - started))
    assert [line for line, _ in arrivals] == ["one", "two", "three", "four"]
    assert arrivals[-1][1] - arrivals[0][1] > 0.5  # streamed as written, not at the end
    assert core.read_namespaced_pod("talker", k8s_namespace).status.phase == "Succeeded"
    # The official client's streaming read.
    stream = core.read_namespaced_pod_log("talker", k8s_namespace, follow=True, _preload_content=False)
    assert stream.data.decode().splitlines() == ["one", "two", "three", "four"]


def test_log_parameters_and_errors(k8s_api, k8s_namespace, k8s_cluster):
    core = client.CoreV1Api(k8s_api)
    containers = [{"name": "app", "image": "busybox:1.36"}, {"name": "sidecar", "image": "busybox:1.36"}]
    script = {"containers": {"app": {"logs": ["a1", "a2", "a3"]}, "sidecar": {"logs": ["s1"]}}}
    core.create_namespaced_pod(k8s_namespace, pod("two", script, containers=containers))
    wait_until(lambda: phase(core, k8s_namespace, "two", "Succeeded"))
    base = f"{k8s_cluster.url}/api/v1/namespaces/{k8s_namespace}/pods/two/log"
    answer = requests.get(base, timeout=5)
    assert answer.status_code == 400
    assert (
        answer.json()["message"]
        == "a container name must be specified for pod two, choose one of: [app sidecar]"
    )
    answer = requests.get(base, params={"container": "nope"}, timeout=5)
    assert (answer.status_code, answer.json()["message"]) == (400, "container nope is not valid for pod two")
    assert requests.get(base, params={"container": "app"}, timeout=5).text == "a1\na2\na3\n"
    assert requests.get(base, params={"container": "app", "tailLines": "2"}, timeout=5).text == "a2\na3\n"
    stamped = requests.get(base, params={"container": "sidecar", "timestamps": "true"}, timeout=5).text
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z s1\n", stamped)
    assert requests.get(base, params={"container": "app", "limitBytes": "4"}, timeout=5).text == "a1\na"
    unscheduled = pod("nowhere", nodeSelector={"no.such/label": "x"})
    core.create_namespaced_pod(k8s_namespace, unscheduled)
    assert core.read_namespaced_pod_log("nowhere", k8s_namespace, _preload_content=False).data == b""
    with pytest.raises(ApiException) as caught:
        core.read_namespaced_pod_log("absent", k8s_namespace)
    assert caught.value.status == 404


def test_graceful_deletion_stops_the_containers_then_removes_the_pod(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(k8s_namespace, pod("long", restart="Always"))
    running = wait_until(lambda: phase(core, k8s_namespace, "long", "Running"))
    start = running.metadata.resource_version
    answer = core.delete_namespaced_pod("long", k8s_namespace)
    assert (
        answer.metadata.deletion_timestamp is not None and answer.metadata.deletion_grace_period_seconds == 30
    )
    wait_until(lambda: not core.list_namespaced_pod(k8s_namespace, field_selector="metadata.name=long").items)
    events = [
        (e["type"], e["object"].status.phase)
        for e in watch.Watch().stream(
            core.list_namespaced_pod, k8s_namespace, resource_version=start, timeout_seconds=1
        )
    ]
    assert events[-1][0] == "DELETED"
    assert ("MODIFIED", "Failed") in events  # the kubelet set a terminal phase before the pod went


def test_restart_policy_on_failure_restarts_with_back_off(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(
        k8s_namespace, pod("flaky", {"exitCode": 1, "durationSeconds": 0.05}, restart="OnFailure")
    )

    def restarted_twice():
        found = core.read_namespaced_pod("flaky", k8s_namespace)
        status = (found.status.container_statuses or [None])[0]
        return found if status and status.restart_count >= 2 else None

    found = wait_until(restarted_twice, timeout_s=15)
    status = found.status.container_statuses[0]
    assert found.status.phase == "Running"
    assert status.last_state.terminated.exit_code == 1
    waiting = wait_until(
        lambda: (
            (s := core.read_namespaced_pod("flaky", k8s_namespace).status.container_statuses[0]).state.waiting
            and s
        )
    )
    assert waiting.state.waiting.reason == "CrashLoopBackOff"


def test_active_deadline_seconds_fails_the_pod(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(k8s_namespace, pod("slow", restart="Always", activeDeadlineSeconds=1))
    failed = wait_until(lambda: phase(core, k8s_namespace, "slow", "Failed"), timeout_s=5)
    assert failed.status.reason == "DeadlineExceeded"
    assert failed.status.message == "Pod was active on the node longer than the specified deadline"


def test_node_loss_taints_the_node_and_evicts_its_pods(k8s_api, k8s_namespace, k8s_sim):
    core = client.CoreV1Api(k8s_api)
    body = pod("stranded", restart="Always", nodeSelector={"kubernetes.io/hostname": "gpu-node-3"})
    body["spec"]["tolerations"].append(
        {
            "key": "node.kubernetes.io/unreachable",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 1,
        }
    )
    core.create_namespaced_pod(k8s_namespace, body)
    wait_until(
        lambda: (
            (p := phase(core, k8s_namespace, "stranded", "Running")) and conditions(p)["Ready"][0] == "True"
        )
    )
    k8s_sim.lose_node("gpu-node-3")
    node = core.read_node("gpu-node-3")
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("Unknown", "NodeStatusUnknown")
    assert {(t.key, t.effect) for t in node.spec.taints} >= {
        ("node.kubernetes.io/unreachable", "NoSchedule"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
    }
    not_ready = wait_until(
        lambda: (
            (p := core.read_namespaced_pod("stranded", k8s_namespace))
            and conditions(p)["Ready"][0] == "False"
            and p
        )
    )
    assert not_ready.status.phase == "Running"  # as last reported: the kubelet is gone
    # After the toleration's 1 s the taint manager marks it and deletes it; it stays Terminating.
    evicted = wait_until(
        lambda: (
            core.read_namespaced_pod("stranded", k8s_namespace).metadata.deletion_timestamp
            and core.read_namespaced_pod("stranded", k8s_namespace)
        ),
        timeout_s=5,
    )
    cond = next(c for c in evicted.status.conditions if c.type == "DisruptionTarget")
    assert (cond.reason, cond.message) == (
        "DeletionByTaintManager",
        "Taint manager: deleting due to NoExecute taint",
    )
    time.sleep(0.3)
    assert core.read_namespaced_pod("stranded", k8s_namespace).metadata.deletion_timestamp is not None
    # The operator marks the node out of service: PodGC removes the pod after marking it Failed.
    k8s_sim.lose_node("gpu-node-3", out_of_service=True)
    wait_until(
        lambda: not core.list_namespaced_pod(k8s_namespace, field_selector="metadata.name=stranded").items
    )
    k8s_sim.restore_node("gpu-node-3")
    node = core.read_node("gpu-node-3")
    assert next(c for c in node.status.conditions if c.type == "Ready").status == "True"
    assert [(t.key, t.effect) for t in node.spec.taints] == [("nvidia.com/gpu", "NoSchedule")]


HOOK = r"""
import json, os, sys
print("argv", json.dumps(sys.argv[1:]), flush=True)
env = os.environ
print("env", env["GREETING"], env["FROM_SECRET"], env["SIM_POD_NAME"], env["SIM_NODE_NAME"], flush=True)
pod = json.load(open(os.environ["SIM_POD_FILE"]))
print("pod", pod["metadata"]["name"], flush=True)
path = sys.argv[sys.argv.index("--metadata-file") + 1]
assert path == os.environ["SIM_TERMINATION_MESSAGE_PATH"], path
with open(path, "w") as handle:
    json.dump({"containerimage.digest": "sha256:" + "ab" * 32}, handle)
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def test_exec_hook_runs_a_local_command_for_a_container(k8s_api, k8s_namespace, k8s_sim):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_secret(
        k8s_namespace, {"metadata": {"name": "s"}, "stringData": {"k": "secret-value"}}
    )
    k8s_sim.hook(r"^example\.test/builder:", [sys.executable, "-c", HOOK])
    container = {
        "name": "build",
        "image": "example.test/builder:1",
        "command": ["buildctl-daemonless.sh"],
        "args": ["build", "--metadata-file", "/dev/termination-log"],
        "env": [
            {"name": "GREETING", "value": "hello"},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
    }
    core.create_namespaced_pod(k8s_namespace, pod("hooked", containers=[container]))
    done = wait_until(lambda: phase(core, k8s_namespace, "hooked", "Succeeded", "Failed"), timeout_s=15)
    terminated = done.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert json.loads(terminated.message) == {"containerimage.digest": "sha256:" + "ab" * 32}
    lines = (
        core.read_namespaced_pod_log("hooked", k8s_namespace, _preload_content=False)
        .data.decode()
        .splitlines()
    )
    argv = json.loads(lines[0].split(" ", 1)[1])
    assert argv[:2] == ["buildctl-daemonless.sh", "build"] and argv[2] == "--metadata-file"
    assert lines[1] == f"env hello secret-value hooked {done.spec.node_name}"
    assert lines[2] == "pod hooked"
    failing = dict(container, env=[*container["env"], {"name": "EXIT", "value": "7"}])
    failing["terminationMessagePolicy"] = "FallbackToLogsOnError"
    core.create_namespaced_pod(k8s_namespace, pod("hooked-fails", containers=[failing]))
    failed = wait_until(lambda: phase(core, k8s_namespace, "hooked-fails", "Failed"), timeout_s=15)
    assert failed.status.container_statuses[0].state.terminated.exit_code == 7


def test_exec_hook_is_stopped_when_its_pod_is_deleted(k8s_api, k8s_namespace, k8s_sim):
    core = client.CoreV1Api(k8s_api)
    sleeper = "import signal, sys, time\nprint('up', flush=True)\ntime.sleep(60)"
    k8s_sim.hook(r"^example\.test/sleeper", [sys.executable, "-c", sleeper])
    core.create_namespaced_pod(
        k8s_namespace,
        pod("sleeps", restart="Always", containers=[{"name": "main", "image": "example.test/sleeper:1"}]),
    )
    wait_until(
        lambda: log_text(core, k8s_namespace, "sleeps") == "up\n",
        timeout_s=15,
    )
    started = time.monotonic()
    core.delete_namespaced_pod("sleeps", k8s_namespace, grace_period_seconds=1)
    wait_until(
        lambda: not core.list_namespaced_pod(k8s_namespace, field_selector="metadata.name=sleeps").items
    )
    assert time.monotonic() - started < 5


FETCH = r"""
import json, os
mounts = json.loads(os.environ["SIM_MOUNTS"])
with open(os.path.join(mounts["/workspace"], "context.txt"), "w") as handle:
    handle.write("fetched " + os.environ["CONTEXT_BLOB"])
"""
BUILD = r"""
import json, os, sys
context = sys.argv[sys.argv.index("--local") + 1].split("=", 1)[1]  # the container's path, made local
print(open(os.path.join(context, "context.txt")).read(), flush=True)
print(open(os.path.join(os.environ["DOCKER_CONFIG"], "config.json")).read(), flush=True)
"""


def test_hooked_containers_share_the_pods_volumes(k8s_api, k8s_namespace, k8s_sim):
    """An init container's hook writes into an emptyDir that the next container's hook reads; a Secret volume
    holds its keys (`items` honoured), as a build pod's context and registry credentials are; the container's
    mount paths in its args and env stand for the local directories."""
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_secret(
        k8s_namespace,
        {
            "metadata": {"name": "robot"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": '{"auths": {}}'},
        },
    )
    k8s_sim.hook(r"^example\.test/fetch:", [sys.executable, "-c", FETCH])
    k8s_sim.hook(r"^example\.test/build:", [sys.executable, "-c", BUILD])
    body = pod(
        "shared",
        initContainers=[
            {
                "name": "context",
                "image": "example.test/fetch:1",
                "env": [{"name": "CONTEXT_BLOB", "value": "registry/ctx@sha256:00"}],
                "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
            }
        ],
        containers=[
            {
                "name": "build",
                "image": "example.test/build:1",
                "command": ["buildctl-daemonless.sh"],
                "args": ["build", "--local", "context=/workspace", "--metadata-file", "/dev/termination-log"],
                "env": [{"name": "DOCKER_CONFIG", "value": "/home/user/.docker"}],
                "volumeMounts": [
                    {"name": "workspace", "mountPath": "/workspace", "readOnly": True},
                    {"name": "docker-config", "mountPath": "/home/user/.docker"},
                ],
            }
        ],
        volumes=[
            {"name": "workspace", "emptyDir": {}},
            {
                "name": "docker-config",
                "secret": {
                    "secretName": "robot",
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            },
        ],
    )
    core.create_namespaced_pod(k8s_namespace, body)
    done = wait_until(lambda: phase(core, k8s_namespace, "shared", "Succeeded", "Failed"), timeout_s=15)
    assert done.status.phase == "Succeeded", log_text(core, k8s_namespace, "shared")
    text = core.read_namespaced_pod_log(
        "shared", k8s_namespace, container="build", _preload_content=False
    ).data
    assert text.decode().splitlines() == ["fetched registry/ctx@sha256:00", '{"auths": {}}']


def test_a_pod_whose_service_account_is_missing_is_forbidden(k8s_cluster, k8s_namespace):
    """The ServiceAccount admission plugin; a pod without a name is named by its generateName (admission
    runs before the name is generated)."""
    url = f"{k8s_cluster.url}/api/v1/namespaces/{k8s_namespace}/pods"
    body = pod("p", serviceAccountName="builder")
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "p-"
    answer = requests.post(url, json=body, timeout=10)
    assert answer.status_code == 403
    assert answer.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'pods "p-" is forbidden: error looking up service account {k8s_namespace}/builder: '
        'serviceaccount "builder" not found',
        "reason": "Forbidden",
        "details": {"name": "p-", "kind": "pods"},
        "code": 403,
    }
    requests.post(
        f"{k8s_cluster.url}/api/v1/namespaces/{k8s_namespace}/serviceaccounts",
        json={"metadata": {"name": "builder"}},
        timeout=10,
    ).raise_for_status()
    created = requests.post(url, json=body, timeout=10)
    assert created.status_code == 201 and created.json()["spec"]["serviceAccountName"] == "builder"
