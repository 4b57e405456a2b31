"""Run INSIDE the hub's virtual environment (the z2jh 4.4.0 hub image's packages) by bench/hub.py: the
profile callable per spawn-page load against a bare HTTP round trip to the same catalog endpoint.

Standard library and the hub's packages only (the project is not installed there). The folder of this
file's copy holds `thinkube_profiles.py` (the source of thinkube_pipelines/hub/profiles.py, as the hub
mounts it); the settings arrive as the hub gets them, as environment variables (its `*_ENV` names),
KUBECONFIG pointing at the Kubernetes API simulator.

argv[1]: JSON {"repetitions", "warmup", "concurrency", "bursts", "images"}. Prints one JSON line:
seconds of each single call (interleaved, after the warm-up), of each burst (`concurrency` calls at once
in this one event loop, as a hub serving many users), each burst's per-call latencies, and a breakdown.
"""

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # where the hub mounts thinkube_profiles.py

import thinkube_profiles


class User:
    """What KubeSpawner reads of a JupyterHub user here."""

    def __init__(self, index: int):
        self.name = f"user{index}"
        self.id = index + 1
        self.url = f"/user/{self.name}/"
        self.escaped_name = self.name


async def main(spec: dict) -> dict:
    import aiohttp
    from kubespawner import KubeSpawner
    from traitlets.config import Config

    config = Config()
    thinkube_profiles.install(config)
    spawners = [KubeSpawner(_mock=True, config=config, user=User(i)) for i in range(spec["concurrency"])]
    spawner = spawners[0]
    settings = thinkube_profiles.Settings.from_env()
    url = settings.images_url
    timeout = aiohttp.ClientTimeout(total=settings.catalog_timeout_s)
    headers = {"Accept": "application/json"}
    expected = spec["images"]

    async def bare() -> None:
        """The baseline: one GET of the same endpoint, its body read; a session of its own (a new
        connection), as the callable opens one per load."""
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=headers, allow_redirects=False) as response,
        ):
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"{url} answered {response.status}")

    shared: dict = {}

    async def keepalive() -> None:
        """Reference: the same GET on a session kept open (a reused connection)."""
        if "session" not in shared:
            shared["session"] = aiohttp.ClientSession(timeout=timeout)
        async with shared["session"].get(url, headers=headers, allow_redirects=False) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"{url} answered {response.status}")

    async def load(who, *, cold: bool = False) -> None:
        """One spawn-page load's `profile_list(spawner)`, as KubeSpawner's form calls it."""
        if cold:
            thinkube_profiles._nodes_cache.clear()
        profiles = await who.profile_list(who)
        if len(profiles) != expected:
            raise RuntimeError(f"{len(profiles)} profiles, expected {expected}")

    async def form(who) -> None:
        """The whole options form: the callable, then KubeSpawner renders its profile template."""
        page = await who.get_options_form()
        if page.count("profile-item") < expected:
            raise RuntimeError("the form lacks profiles")

    singles = {
        "bare": bare,
        "keepalive": keepalive,
        "cached": lambda: load(spawner),
        "uncached": lambda: load(spawner, cold=True),
        "form": lambda: form(spawner),
    }

    async def timed(call) -> float:
        started = time.perf_counter()
        await call()
        return time.perf_counter() - started

    out: dict = {"single": {name: [] for name in singles}, "bursts": {}, "breakdown": {}}
    for _ in range(spec["warmup"]):
        for call in singles.values():
            await timed(call)
    for _ in range(spec["repetitions"]):  # interleaved, so that a busy moment hits every kind alike
        for name, call in singles.items():
            out["single"][name].append(await timed(call))

    api = thinkube_profiles.kubernetes_api(spawner)  # kubespawner's shared client: every spawner's
    list_node = api.list_node
    node_lists = [0]

    async def counted_list_node(*args, **kwargs):
        node_lists[0] += 1
        return await list_node(*args, **kwargs)

    async def burst(name: str) -> dict:
        """`concurrency` calls started at once: the burst's wall time, each call's latency, this process's
        CPU time over the burst, and the node lists sent to the API server."""
        if name == "uncached":
            thinkube_profiles._nodes_cache.clear()  # cold once: every load of the burst finds it empty

        async def one(index: int) -> float:
            started = time.perf_counter()
            if name == "bare":
                await bare()
            else:
                await load(spawners[index])
            return time.perf_counter() - started

        node_lists[0] = 0
        cpu = time.process_time()
        started = time.perf_counter()
        latencies = await asyncio.gather(*(one(i) for i in range(len(spawners))))
        return {
            "wall_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu,
            "latencies_s": list(latencies),
            "node_lists": node_lists[0],
        }

    kinds = ("bare", "cached", "uncached")
    out["bursts"] = {name: [] for name in kinds}
    api.list_node = counted_list_node  # counts the node lists; the call itself is the client's own
    try:
        for name in kinds:
            await burst(name)  # warm-up
        for _ in range(spec["bursts"]):
            for name in kinds:
                out["bursts"][name].append(await burst(name))
    finally:
        del api.list_node

    # Where one load's time goes: the callable's own steps, called directly (interleaved).
    steps = {"fetch_images": [], "parse": [], "cluster_gpus (uncached)": [], "build_profiles": []}
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as response,
    ):
        body = await response.read()
    for _ in range(spec["repetitions"]):
        started = time.perf_counter()
        images = await thinkube_profiles.fetch_images(settings)
        steps["fetch_images"].append(time.perf_counter() - started)
        started = time.perf_counter()
        thinkube_profiles.parse_images(json.loads(body))
        steps["parse"].append(time.perf_counter() - started)
        thinkube_profiles._nodes_cache.clear()
        started = time.perf_counter()
        facts = await thinkube_profiles.cluster_gpus(settings, api)
        steps["cluster_gpus (uncached)"].append(time.perf_counter() - started)
        started = time.perf_counter()
        thinkube_profiles.build_profiles(images, facts, settings)
        steps["build_profiles"].append(time.perf_counter() - started)
    out["breakdown"] = steps
    out["catalog_bytes"] = len(body)
    out["gpu_images"] = sum(image.gpu_required for image in images)
    out["gpu_products"] = facts.products
    if "session" in shared:
        await shared["session"].close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
