"""Our image pre-puller: a DaemonSet in the hub's namespace that pulls every catalog image (by digest) on
every worker node, GPU nodes included, so that a user's first start of an image does not wait for a pull of
several GB.

Why not the chart's pullers (`prePuller.hook`, `prePuller.continuous`): both are DaemonSets of the helm
release, and helm 4's `--wait` (kstatus) waits for a release's DaemonSets to be ready, that is, until every
node has pulled every image. A GPU image is 10+ GB: a first deploy, or any deploy after a new image, would
run past the deploy's budget (THINKUBE_HUB_BUDGET_S) and be rolled back, although the hub itself is fine.
So the chart's pullers are off (hub/values.py) and this DaemonSet is applied beside the release (server-side,
by the release step: `render.release_manifests`), never waited for: the images go on pulling after the
deploy has returned. The release step records the DaemonSet's counts (nodes desired, ready, up to date) as
it finds them once the release is up; a node's pod is ready when that node has every image.

What it mirrors of the chart's puller (jupyterhub/templates/image-puller/_helpers-daemonset.tpl of z2jh
4.4.0): one init container per image running `/bin/sh -c "echo pulled <name>"` (the pull is the point; the
command only has to end), then the chart's pause image as the only main container, the chart's restricted
container security context (non-root, no privilege escalation, all capabilities dropped, RuntimeDefault
seccomp), no service account token, no grace period, the user pods' tolerations (the chart's
`hub.jupyter.org/dedicated=user`) plus the GPU taint's. No node selector and no affinity: every node a user
pod may land on holds the images. Unlike the chart's `maxUnavailable: 100%`, the rolling update replaces
one node's pod at a time (`maxUnavailable: 1`): a new digest is pulled everywhere in turn, and the registry
never serves every node at once.

`prepuller_manifest(settings, images)` is pure: the `hub render` command and the deploy make the same object.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from thinkube_pipelines.hub.values import chart_defaults, image_reference
from thinkube_pipelines.hub.volumes import LABELS

if TYPE_CHECKING:
    from thinkube_pipelines.catalog.contract import CatalogItem
    from thinkube_pipelines.hub.settings import HubSettings

NAME = "thinkube-image-puller"
"""The DaemonSet's name (the chart's own puller was `continuous-image-puller`)."""
COMPONENT = "image-puller"
SELECTOR = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": COMPONENT}
USER_TOLERATIONS = [
    # the chart's `scheduling.userPods.tolerations` defaults: nodes dedicated to user pods get the images
    {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
    {"key": "hub.jupyter.org_dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
]
RESOURCES = {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}
"""Each container's: an echo and a pause, nothing more (a pod's request is the largest init container's)."""
CONTAINER_NAME_MAX = 63
_NOT_IN_LABEL = re.compile(r"[^a-z0-9-]+")


def pause_image(defaults: Mapping[str, Any] | None = None) -> str:
    """The chart's pause image (`prePuller.pause.image` of its default values), `name:tag`."""
    image = (defaults or chart_defaults())["prePuller"]["pause"]["image"]
    return f"{image['name']}:{image['tag']}"


def security_context(defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The chart's restricted context for its puller containers (`prePuller.containerSecurityContext`)."""
    return (defaults or chart_defaults())["prePuller"]["containerSecurityContext"]


def container_name(image_name: str) -> str:
    """`pull-<catalog name>`; a name that is not a DNS label as it is (`.`/`_`, or too long) is made one and
    made unique by a short hash of the catalog name."""
    name = f"pull-{image_name}"
    if _NOT_IN_LABEL.search(image_name) is None and len(name) <= CONTAINER_NAME_MAX:
        return name
    digest = hashlib.sha256(image_name.encode()).hexdigest()[:8]
    slug = _NOT_IN_LABEL.sub("-", image_name).strip("-")
    return f"pull-{slug[: CONTAINER_NAME_MAX - len('pull--') - len(digest)]}-{digest}"


def _puller(name: str, image: str, command: list[str] | None, context: Mapping[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": image}
    if command:
        container["command"] = command
    container["resources"] = {k: dict(v) for k, v in RESOURCES.items()}
    container["securityContext"] = dict(context)
    return container


def prepuller_manifest(settings: HubSettings, images: Sequence[CatalogItem]) -> dict[str, Any]:
    """The pre-puller DaemonSet for the catalog's `images` (each by digest when the catalog has it)."""
    defaults = chart_defaults()  # parsed once
    context = security_context(defaults)
    init = [
        _puller(container_name(item.name), image_reference(item), _echo(item.name), context)
        for item in images
    ]
    labels = {**LABELS, **SELECTOR}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": dict(SELECTOR)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "tolerations": [
                        *USER_TOLERATIONS,
                        {"key": settings.gpu_toleration_key, "operator": "Exists", "effect": "NoSchedule"},
                    ],
                    "terminationGracePeriodSeconds": 0,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "initContainers": init,
                    "containers": [_puller("pause", pause_image(defaults), None, context)],
                },
            },
        },
    }


def _echo(name: str) -> list[str]:
    return ["/bin/sh", "-c", f"echo pulled {name}"]


def prepuller_status(daemonset: Mapping[str, Any] | None) -> dict[str, int]:
    """The DaemonSet's counts as the API server has them (zeros before its controller first looked):
    nodes that should run it, that have a pod, whose pod has every image (ready), and whose pod has the
    current images (updated)."""
    status = (daemonset or {}).get("status") or {}
    return {
        "desired": int(status.get("desiredNumberScheduled", 0)),
        "scheduled": int(status.get("currentNumberScheduled", 0)),
        "ready": int(status.get("numberReady", 0)),
        "updated": int(status.get("updatedNumberScheduled", 0)),
    }
