"""The hub's `profile_list`: one KubeSpawner profile per Jupyter image in the catalog, asked at each spawn.

This file runs INSIDE the hub. The hub_deploy job mounts its source text into the hub pod (z2jh
`hub.extraFiles`) and the hub's config calls `install(c)`; its settings arrive as environment variables
(`hub.extraEnv`, the `*_ENV` names below). So it imports only the standard library at the top: aiohttp,
tornado, kubernetes_asyncio and kubespawner (all in the hub image) are imported inside the functions that
use them, and this module imports in the pipeline's own environment too (the renderer reads its
constants and its source).

What a spawn-page load does (DESIGN.md "Profiles"; "Where we go beyond the plan" 1, 2, 3 and 7):

- `GET {catalog}/api/v1/images/jupyter` with aiohttp and a short timeout (never blocking the hub's
  event loop). Unreachable, a timeout, non-200 (this project's catalog answers 503 when it has no image),
  `[]` (the real thinkube-control's "none") or an answer that is not a list of images: the callable raises
  `tornado.web.HTTPError(503)`, which JupyterHub shows on the spawn page with its message (the catalog's
  URL and the problem). The hub itself stays up, and there is no built-in fallback list.
- One profile per image, slug derived from the image's name only (KubeSpawner calls `profile_list` for
  the form and again at spawn, and both lists must agree whatever the catalog's digests do in between);
  the image is `registry/repository@digest` when the catalog has a digest, else `registry/repository:tag`;
  the catalog's `default` is honoured.
- GPU images (`metadata.gpu_required`): `extra_resource_limits {"nvidia.com/gpu": N}` and a toleration of
  the GPU taint, no node selector by default (the scheduler picks any GPU node). Options computed from
  the live cluster's nodes (read through kubespawner's shared kubernetes_asyncio client, cached for a few
  seconds): the GPU count, 1 up to what one node offers, and where nodes carry several GPU products
  (`nvidia.com/gpu.product`), the product, applied as a node selector only when picked. A count above
  what one node of the picked product offers fails the spawn with a message, before any pod exists.
  Nodes that cannot be read (no RBAC, the API server down) fail the page like the catalog does.
- CPU and memory choices bounded by the image's `cpu_limit` and `mem_limit` (the limit is the default).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import html
import json
import logging
import math
import os
import re
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

#: The catalog's base URL as the hub reaches it (in-cluster), e.g. http://thinkube-catalog.catalog:8000.
CATALOG_URL_ENV = "THINKUBE_PROFILES_CATALOG_URL"
#: Seconds one catalog request may take, connect to last byte (default DEFAULT_CATALOG_TIMEOUT_S).
CATALOG_TIMEOUT_ENV = "THINKUBE_PROFILES_CATALOG_TIMEOUT"
#: The extended resource GPUs are counted in (default "nvidia.com/gpu").
GPU_RESOURCE_ENV = "THINKUBE_PROFILES_GPU_RESOURCE"
#: The node label naming a node's GPU product (default "nvidia.com/gpu.product").
GPU_PRODUCT_LABEL_ENV = "THINKUBE_PROFILES_GPU_PRODUCT_LABEL"
#: The taint key GPU nodes carry; GPU pods tolerate it with operator Exists (default "nvidia.com/gpu").
GPU_TOLERATION_KEY_ENV = "THINKUBE_PROFILES_GPU_TOLERATION_KEY"
#: Seconds the cluster's GPU facts are reused between spawn-page loads (default DEFAULT_NODES_CACHE_S).
NODES_CACHE_ENV = "THINKUBE_PROFILES_NODES_CACHE_SECONDS"

#: Every environment variable this module reads (the renderer sets these as `hub.extraEnv`).
ENV_NAMES = (
    CATALOG_URL_ENV,
    CATALOG_TIMEOUT_ENV,
    GPU_RESOURCE_ENV,
    GPU_PRODUCT_LABEL_ENV,
    GPU_TOLERATION_KEY_ENV,
    NODES_CACHE_ENV,
)

CATALOG_PATH = "/api/v1/images/jupyter"
DEFAULT_CATALOG_TIMEOUT_S = 3.0
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
DEFAULT_GPU_TOLERATION_KEY = "nvidia.com/gpu"
DEFAULT_NODES_CACHE_S = 30.0
#: Seconds the Kubernetes node list may take (past it the spawn page says so).
NODES_TIMEOUT_S = 5.0
#: The most bytes of a catalog answer read (the catalog's own list is far smaller).
MAX_CATALOG_BYTES = 4 * 1024 * 1024

#: Option keys in `profile_options` (the form posts `profile-option-{slug}--{key}`).
GPUS_OPTION = "gpus"
GPU_PRODUCT_OPTION = "gpu_product"
CPU_OPTION = "cpu"
MEMORY_OPTION = "memory"
#: The product choice that adds no node selector.
ANY_PRODUCT = "any"
#: The key of the GPU toleration when KubeSpawner's tolerations are a dict.
TOLERATION_KEY = "thinkube-gpu"

log = logging.getLogger("thinkube_profiles")

GIB = 1024**3
_MEMORY_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_MEMORY = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>[KMGT]?)i?$")


class ProfilesUnavailable(Exception):
    """No profiles can be offered now; the message names the service and the problem (for the page)."""


class CatalogUnavailable(ProfilesUnavailable):
    """The catalog could not give a usable list of Jupyter images; the message names the URL and why."""


class ClusterUnavailable(ProfilesUnavailable):
    """The cluster's nodes could not be read (GPU images need them for their choices)."""


@dataclass(frozen=True)
class Settings:
    """What the callable needs, read from the hub's environment (`Settings.from_env()`)."""

    catalog_url: str
    catalog_timeout_s: float = DEFAULT_CATALOG_TIMEOUT_S
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    gpu_product_label: str = DEFAULT_GPU_PRODUCT_LABEL
    gpu_toleration_key: str = DEFAULT_GPU_TOLERATION_KEY
    nodes_cache_s: float = DEFAULT_NODES_CACHE_S

    @property
    def images_url(self) -> str:
        return self.catalog_url.rstrip("/") + CATALOG_PATH

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        url = env.get(CATALOG_URL_ENV, "").strip()
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{CATALOG_URL_ENV} must be the catalog's http(s) base URL, got {url!r}")

        def number(name: str, default: float) -> float:
            text = env.get(name, "").strip()
            if not text:
                return default
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{name} must be a number of seconds, got {text!r}") from None
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {text!r}")
            return value

        return cls(
            catalog_url=url,
            catalog_timeout_s=number(CATALOG_TIMEOUT_ENV, DEFAULT_CATALOG_TIMEOUT_S),
            gpu_resource=env.get(GPU_RESOURCE_ENV) or DEFAULT_GPU_RESOURCE,
            gpu_product_label=env.get(GPU_PRODUCT_LABEL_ENV) or DEFAULT_GPU_PRODUCT_LABEL,
            gpu_toleration_key=env.get(GPU_TOLERATION_KEY_ENV) or DEFAULT_GPU_TOLERATION_KEY,
            nodes_cache_s=number(NODES_CACHE_ENV, DEFAULT_NODES_CACHE_S),
        )


# --- the catalog ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """One Jupyter image as the profiles need it (from this project's catalog or thinkube-control's)."""

    name: str
    display_name: str
    description: str
    default: bool
    image: str  # registry/repository@digest, else registry/repository:tag
    gpu_required: bool = False
    cpu_limit: float | None = None
    mem_limit: int | None = None  # bytes


def memory_bytes(text: str) -> int:
    """KubeSpawner's reading of a memory quantity (powers of 1024; `32G` and `32Gi` alike)."""
    match = _MEMORY.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a memory quantity: {text!r}")
    return int(float(match["number"]) * _MEMORY_UNITS[match["unit"]])


def parse_images(body: Any) -> list[Image]:
    """The catalog's answer as images; ValueError naming the item and field when it is not one."""
    if not isinstance(body, list):
        raise ValueError(f"expected a JSON list of images, got {type(body).__name__}")
    images = []
    for index, item in enumerate(body):
        where = f"item {index}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: 'name' is missing or not a string")
        where = f"item {index} ({name!r})"
        metadata = item.get("metadata")
        if not isinstance(metadata, dict):
            raise ValueError(f"{where}: 'metadata' is missing or not an object")
        parts = {}
        for key in ("registry", "repository"):
            value = metadata.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: 'metadata.{key}' is missing or not a string")
            parts[key] = value.strip().strip("/")
        digest, tag = metadata.get("digest"), metadata.get("tag")
        if digest and not (isinstance(digest, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", digest)):
            raise ValueError(f"{where}: 'metadata.digest' is not a sha256 digest")
        if not digest and not (isinstance(tag, str) and tag.strip()):
            raise ValueError(f"{where}: neither 'metadata.digest' nor 'metadata.tag' is set")
        reference = f"{parts['registry']}/{parts['repository']}"
        reference += f"@{digest}" if digest else f":{tag.strip()}"
        display_name = item.get("display_name")
        description = item.get("description")
        default = item.get("default", False)
        gpu = metadata.get("gpu_required", False)
        if not isinstance(default, bool):
            raise ValueError(f"{where}: 'default' is not a boolean")
        if not isinstance(gpu, bool):
            raise ValueError(f"{where}: 'metadata.gpu_required' is not a boolean")
        cpu_limit = metadata.get("cpu_limit")
        if cpu_limit is not None:
            if isinstance(cpu_limit, bool) or not isinstance(cpu_limit, int | float):
                raise ValueError(f"{where}: 'metadata.cpu_limit' is not a number")
            if not (math.isfinite(cpu_limit) and cpu_limit > 0):
                raise ValueError(f"{where}: 'metadata.cpu_limit' is not a positive number")
        mem_limit = metadata.get("mem_limit")
        if mem_limit is not None:
            if not isinstance(mem_limit, str):
                raise ValueError(f"{where}: 'metadata.mem_limit' is not a memory quantity string")
            try:
                mem_limit = memory_bytes(mem_limit)
            except ValueError as error:
                raise ValueError(f"{where}: 'metadata.mem_limit': {error}") from None
            if mem_limit <= 0:
                raise ValueError(f"{where}: 'metadata.mem_limit' is not positive")
        images.append(
            Image(
                name=name.strip(),
                display_name=display_name if isinstance(display_name, str) and display_name else name,
                description=description if isinstance(description, str) else "",
                default=default,
                image=reference,
                gpu_required=gpu,
                cpu_limit=float(cpu_limit) if cpu_limit is not None else None,
                mem_limit=mem_limit,
            )
        )
    return images


async def fetch_images(settings: Settings) -> list[Image]:
    """The catalog's Jupyter images; CatalogUnavailable naming the URL and the problem otherwise."""
    import aiohttp

    url = settings.images_url
    timeout = aiohttp.ClientTimeout(total=settings.catalog_timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers={"Accept": "application/json"}, allow_redirects=False) as response,
        ):
            status = response.status
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_CATALOG_BYTES:
                    break
    except TimeoutError:  # aiohttp's timeouts are TimeoutErrors too
        raise CatalogUnavailable(
            f"The image catalog at {url} did not answer within {settings.catalog_timeout_s:g} s."
        ) from None
    except aiohttp.ClientConnectionError as error:
        raise CatalogUnavailable(f"The image catalog at {url} is unreachable: {error}.") from None
    except aiohttp.ClientError as error:
        raise CatalogUnavailable(f"The image catalog at {url} could not be read: {error}.") from None
    if status != 200:
        detail = _detail(body)
        raise CatalogUnavailable(
            f"The image catalog at {url} answered HTTP {status}" + (f": {detail}" if detail else ".")
        )
    if len(body) > MAX_CATALOG_BYTES:
        raise CatalogUnavailable(f"The image catalog at {url} answered more than {MAX_CATALOG_BYTES} bytes.")
    try:
        images = parse_images(json.loads(bytes(body)))
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise CatalogUnavailable(f"The image catalog at {url} answered a malformed list: {error}.") from None
    if not images:
        raise CatalogUnavailable(f"The image catalog at {url} lists no Jupyter image.")
    return images


def _detail(body: bytes | bytearray) -> str:
    """The `detail` of an error answer (FastAPI's shape), else its first line; at most 200 characters."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if not isinstance(detail, str):
        lines = body.decode("utf-8", "replace").strip().splitlines()
        detail = lines[0] if lines else ""
    return detail[:200]


# --- the cluster's GPUs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuFacts:
    """GPUs per node of each product (`products`: product -> the most one node of it offers)."""

    products: dict[str, int] = field(default_factory=dict)

    @property
    def max_per_node(self) -> int:
        return max(self.products.values(), default=0)


def gpu_facts(nodes: list[Any], resource: str, product_label: str) -> GpuFacts:
    """From V1Node objects (or their dicts): per product, the largest allocatable count on one node.

    Nodes that are cordoned (`spec.unschedulable`) or offer no GPU are left out; a GPU node without the
    product label counts under "" (only the count choice then, no product choice for it)."""
    products: dict[str, int] = {}
    for node in nodes:
        node = _as_dict(node)
        if (node.get("spec") or {}).get("unschedulable"):
            continue
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        try:
            count = int(str(allocatable.get(resource, "0")))
        except ValueError:
            continue
        if count <= 0:
            continue
        product = ((node.get("metadata") or {}).get("labels") or {}).get(product_label, "")
        products[product] = max(products.get(product, 0), count)
    return GpuFacts(dict(sorted(products.items())))


def _as_dict(node: Any) -> dict[str, Any]:
    if isinstance(node, dict):
        return node
    spec, status, metadata = node.spec, node.status, node.metadata
    return {
        "metadata": {"labels": (metadata.labels if metadata else None) or {}},
        "spec": {"unschedulable": bool(spec and spec.unschedulable)},
        "status": {"allocatable": (status.allocatable if status else None) or {}},
    }


_nodes_cache: dict[tuple[str, str], tuple[float, GpuFacts]] = {}
_nodes_pending: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], asyncio.Task]] = (
    weakref.WeakKeyDictionary()
)
"""The node list under way, per event loop and cache key: loads that find the cache cold while it is
under way wait for it (single flight) instead of sending their own."""


async def cluster_gpus(settings: Settings, api: Any) -> GpuFacts:
    """The live cluster's GPU facts, reused for `nodes_cache_s` seconds.

    `api` is a kubernetes_asyncio CoreV1Api: the hub's own (KubeSpawner's shared client, from its
    service account in the cluster, or a kubeconfig). Concurrent loads with a cold cache share one node
    list (per event loop): a burst of spawn-page loads sends one request, not one each. ClusterUnavailable
    when the nodes cannot be read (no RBAC to list nodes, the API server down or slow): no guessed
    choices."""
    key = (settings.gpu_resource, settings.gpu_product_label)
    cached = _nodes_cache.get(key)
    if cached and time.monotonic() - cached[0] < settings.nodes_cache_s:
        return cached[1]
    loop = asyncio.get_running_loop()
    pending = _nodes_pending.setdefault(loop, {})
    task = pending.get(key)
    if task is None:
        task = loop.create_task(_list_gpus(settings, api, key))
        pending[key] = task

        def done(finished: asyncio.Task) -> None:
            if pending.get(key) is finished:
                del pending[key]
            if not finished.cancelled():
                finished.exception()  # retrieved here too: every waiter may have gone away

        task.add_done_callback(done)
    # shield: a waiter that goes away (the user left the page) does not cancel the others' list
    return await asyncio.shield(task)


async def _list_gpus(settings: Settings, api: Any, key: tuple[str, str]) -> GpuFacts:
    started = time.monotonic()
    try:
        nodes = await asyncio.wait_for(api.list_node(_request_timeout=NODES_TIMEOUT_S), NODES_TIMEOUT_S + 1)
    except Exception as error:  # ApiException, aiohttp's errors, a timeout
        reason = _api_error(error)
        raise ClusterUnavailable(
            f"The GPU choices need the cluster's nodes, and the Kubernetes API did not list them: {reason}."
        ) from None
    facts = gpu_facts(list(nodes.items or []), settings.gpu_resource, settings.gpu_product_label)
    _nodes_cache[key] = (started, facts)
    return facts


def _api_error(error: Exception) -> str:
    status = getattr(error, "status", None)
    if status:
        reason = getattr(error, "reason", "") or ""
        hint = " (the hub's service account needs to list nodes)" if status == 403 else ""
        return f"HTTP {status} {reason}".strip() + hint
    if isinstance(error, TimeoutError):
        return f"no answer within {NODES_TIMEOUT_S:g} s"
    return str(error) or type(error).__name__


def kubernetes_api(spawner: Any) -> Any:
    """The CoreV1Api the spawner itself uses (`spawner.api`, kubespawner's shared client); outside a
    spawner, kubespawner's shared client after its `load_config()`."""
    api = getattr(spawner, "api", None)
    if api is not None:
        return api
    from kubespawner.clients import load_config, shared_client

    load_config()
    return shared_client("CoreV1Api")


# --- profiles ---------------------------------------------------------------------------------------


def slug_for(name: str) -> str:
    """A stable slug from an image's name alone: lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if slug != name or not slug:
        # Names that had to change get a short hash of the name, so two names never share a slug.
        slug = f"{slug or 'image'}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return slug


def _with_gpu_toleration(toleration: dict[str, Any], spawner: Any) -> Any:
    """KubeSpawner's tolerations (a list or a dict, as configured) plus the GPU toleration."""
    current = spawner.tolerations
    if isinstance(current, dict):
        return {**current, TOLERATION_KEY: toleration}
    current = list(current or [])
    return current if toleration in current else [*current, toleration]


def _capped_guarantee(name: str, limit: float, spawner: Any) -> Any:
    """The configured guarantee, lowered to the chosen limit (a request above its limit is invalid)."""
    guarantee = getattr(spawner, name)
    return min(guarantee, limit) if guarantee else guarantee


def _check_gpu_count(count: int, facts: GpuFacts, settings: Settings, spawner: Any) -> dict[str, str]:
    """The GPU limit for `count`, refused when no node of the picked product has that many."""
    product = (spawner.node_selector or {}).get(settings.gpu_product_label)
    most = facts.products.get(product, 0) if product is not None else facts.max_per_node
    if facts.products and count > most:
        from tornado import web

        raise web.HTTPError(
            400,
            "%s",
            f"{count} GPUs asked, but one {product or 'GPU'} node offers at most {most}.",
        )
    return {settings.gpu_resource: str(count)}


def cpu_choices(limit: float) -> list[float]:
    """1, 2, 4, ... below the limit, and the limit itself (at most six, the largest kept)."""
    values, n = [], 1.0
    while n < limit:
        values.append(n)
        n *= 2
    return [*values, float(limit)][-6:]


def memory_choices(limit: int) -> list[int]:
    """1, 2, 4, ... GiB below the limit, and the limit itself (at most six, the largest kept)."""
    values, n = [], GIB
    while n < limit:
        values.append(n)
        n *= 2
    return [*values, limit][-6:]


def _cpu_text(value: float) -> str:
    return f"{value:g} CPU" + ("" if value == 1 else "s")


def _memory_text(value: int) -> str:
    return f"{value / GIB:g} GiB" if value >= GIB else f"{value / 1024**2:g} MiB"


def build_profiles(images: list[Image], facts: GpuFacts, settings: Settings) -> list[dict[str, Any]]:
    """KubeSpawner profiles: one per image, in the catalog's order; GPU and resource options per image."""
    profiles = []
    toleration = {"key": settings.gpu_toleration_key, "operator": "Exists", "effect": "NoSchedule"}
    defaults = [image.name for image in images if image.default]
    for image in images:
        override: dict[str, Any] = {"image": image.image}
        options: dict[str, Any] = {}
        if image.gpu_required:
            override["extra_resource_limits"] = {settings.gpu_resource: "1"}
            override["tolerations"] = functools.partial(_with_gpu_toleration, toleration)
            named = {product: count for product, count in facts.products.items() if product}
            if len(named) > 1:
                choices = {ANY_PRODUCT: {"display_name": "Any GPU node", "default": True}}
                for product, count in named.items():
                    # A label value ([A-Za-z0-9._-]) is safe as the form's choice key as it is.
                    choices[product] = {
                        "display_name": html.escape(f"{product} (up to {count} per node)"),
                        "kubespawner_override": {"node_selector": {settings.gpu_product_label: product}},
                    }
                options[GPU_PRODUCT_OPTION] = {"display_name": "GPU type", "choices": choices}
            most = max(facts.max_per_node, 1)
            options[GPUS_OPTION] = {
                "display_name": "GPUs",
                "choices": {
                    str(n): {
                        "display_name": f"{n} GPU" + ("" if n == 1 else "s"),
                        "default": n == 1,
                        "kubespawner_override": {
                            "extra_resource_limits": functools.partial(_check_gpu_count, n, facts, settings)
                        },
                    }
                    for n in range(1, most + 1)
                },
            }
        if image.cpu_limit is not None:
            override["cpu_limit"] = image.cpu_limit
            options[CPU_OPTION] = {
                "display_name": "CPU limit",
                "choices": {
                    f"{value:g}": {
                        "display_name": _cpu_text(value),
                        "default": value == image.cpu_limit,
                        "kubespawner_override": {
                            "cpu_limit": value,
                            "cpu_guarantee": functools.partial(_capped_guarantee, "cpu_guarantee", value),
                        },
                    }
                    for value in cpu_choices(image.cpu_limit)
                },
            }
        if image.mem_limit is not None:
            override["mem_limit"] = image.mem_limit
            options[MEMORY_OPTION] = {
                "display_name": "Memory limit",
                "choices": {
                    str(value): {
                        "display_name": _memory_text(value),
                        "default": value == image.mem_limit,
                        "kubespawner_override": {
                            "mem_limit": value,
                            "mem_guarantee": functools.partial(_capped_guarantee, "mem_guarantee", value),
                        },
                    }
                    for value in memory_choices(image.mem_limit)
                },
            }
        # KubeSpawner's form template puts these into the page as they are (it does not escape): the
        # catalog's text must not become markup on the spawn page.
        description = image.description
        if image.gpu_required and not facts.products:
            description = f"{description} (No GPU node is schedulable now.)".strip()
        profile: dict[str, Any] = {
            "display_name": html.escape(image.display_name),
            "description": html.escape(description),
            "slug": slug_for(image.name),
            "default": bool(defaults) and image.name == defaults[0],
            "kubespawner_override": override,
        }
        if options:
            profile["profile_options"] = options
        profiles.append(profile)
    return profiles


async def make_profiles(settings: Settings, spawner: Any = None) -> list[dict[str, Any]]:
    """The profiles for one spawn-page load (or one spawn); ProfilesUnavailable when there are none.

    The nodes are read only when the catalog lists a GPU image."""
    images = await fetch_images(settings)
    facts = GpuFacts()
    if any(image.gpu_required for image in images):
        facts = await cluster_gpus(settings, kubernetes_api(spawner))
    return build_profiles(images, facts, settings)


async def profile_list(spawner: Any) -> list[dict[str, Any]]:
    """KubeSpawner's `profile_list` callable: the catalog's images as profiles, or the spawn page's error.

    Raises `tornado.web.HTTPError(503)` with a message naming the catalog and the problem; JupyterHub
    renders it on the spawn page (and, at spawn, fails that spawn only)."""
    from tornado import web

    try:
        settings = Settings.from_env()
        return await make_profiles(settings, spawner)
    except (ProfilesUnavailable, ValueError) as error:
        message = str(error)
        log.error("thinkube profiles: %s", message)
        # "%s" keeps a "%" in the message from breaking JupyterHub's error page (log_message % args).
        raise web.HTTPError(503, "%s", message) from None


def install(c: Any) -> None:
    """Configure the hub: `c.KubeSpawner.profile_list = profile_list`.

    The settings are checked here, so a deploy without a catalog URL fails when the hub starts (and helm
    rolls it back), not at the first spawn."""
    Settings.from_env()
    c.KubeSpawner.profile_list = profile_list
