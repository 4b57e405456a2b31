"""The ServiceAccount controller's part that every namespace sees: a `default` ServiceAccount.

https://kubernetes.io/docs/concepts/security/service-accounts/#default-service-accounts. Simplified: the
root CA ConfigMap `kube-root-ca.crt` is not published, and no tokens are issued.
"""

from __future__ import annotations

from tests.k8s_sim.runtime import NAMESPACES, Component, resource

SERVICEACCOUNTS = resource("", "serviceaccounts")


class NamespaceDefaults(Component):
    interests = frozenset({"namespaces", "serviceaccounts"})

    def sync(self) -> None:
        for namespace in list(self.store.iter(NAMESPACES)):
            name = namespace["metadata"]["name"]
            if namespace["metadata"].get("deletionTimestamp"):
                continue
            if self.store.peek(SERVICEACCOUNTS, name, "default") is None:
                self.runtime.create(SERVICEACCOUNTS, name, {"metadata": {"name": "default"}})
