"""A Kubernetes API server simulator for the tests (issue 8), with a simulated control plane and nodes.

The API: app.py (HTTP, pods/log, eviction, DELETE options), store.py (objects, resourceVersions, finalizers,
graceful deletion, events, the ServiceAccount admission check), defaults.py (defaulting and mutating
admission), validation.py (the real OpenAPI
schemas and some API rules), resources.py (kinds and discovery), openapi.py (the `/openapi/v2` and
`/openapi/v3` documents), managed.py and typed.py (server-side apply and `metadata.managedFields`),
patch.py (JSON, merge and strategic merge patches), protobuf.py (protobuf request bodies), errors.py
(Status bodies), faults.py (API faults), control.py (the `/_sim/...` control endpoints).

The cluster: cluster.py (seeds: `gpu-cluster`, a kubeadm control-plane node and three NVIDIA GPU nodes),
runtime.py (the loop that runs the rest), scheduler.py, kubelet.py (pod lifecycle, scripted outcomes, logs,
faults, and the exec hook that carries a container out with a local command), controllers/ (Jobs,
ReplicaSets, Deployments, DaemonSets, StatefulSets, PodDisruptionBudgets, volume binding, garbage collection,
TTL-after-finished, PodGC, node loss and taint-based eviction, default ServiceAccounts).

Each module's docstring says what it does as the real component does, with the Kubernetes documentation it
follows, and what it simplifies.

Run it with `python -m tests.k8s_sim --port N [--seed gpu-cluster]`; tests start it with
`tests.fixtures.kubernetes` (fixtures `k8s_cluster`, `k8s_api`, `k8s_sim`, `k8s_namespace`). The real
kubectl and helm work against it through the fixture's kubeconfig (tests/test_k8s_helm_kubectl.py).
"""
