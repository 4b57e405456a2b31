"""The simulator's control endpoints, under `/_sim/` (not part of the Kubernetes API; JSON in and out).

| endpoint | what |
| --- | --- |
| `GET /_sim` | what is configured: faults, scripts, hooks, lost nodes |
| `POST /_sim/reset` | remove every fault, script and hook, bring lost nodes back |
| `POST /_sim/faults`, `GET`, `DELETE`, `DELETE /_sim/faults/<id>` | API faults (faults.py) |
| `POST /_sim/scripts`, `GET`, `DELETE`, `DELETE /_sim/scripts/<id>` | pod outcome rules (kubelet.py) |
| `POST /_sim/hooks`, `GET`, `DELETE`, `DELETE /_sim/hooks/<id>` | exec hooks (kubelet.py) |
| `POST /_sim/nodes/<name>/lose` `{"outOfService": bool}` | node loss (controllers/nodes.py) |
| `POST /_sim/nodes/<name>/restore` | the node is back |
| `POST /_sim/pods/<namespace>/<name>/evict` `{"message": str}` | a kubelet (node-pressure) eviction now |

Errors are `{"error": message}` with 400 (bad input) or 404 (unknown node, pod or id).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.k8s_sim import errors

if TYPE_CHECKING:
    from tests.k8s_sim.app import Simulator


def _answer(body: Any, code: int = 200) -> Response:
    return JSONResponse(body, status_code=code)


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("the body must be a JSON object")
    return value


async def handle(sim: Simulator, request: Request) -> Response:
    parts = [p for p in request.url.path.split("/") if p][1:]
    method = request.method
    runtime = sim.runtime
    try:
        body = await _json(request) if method in ("POST", "PUT") else {}
        if not parts and method == "GET":
            return _answer(
                {
                    "faults": [r.describe() for r in sim.faults.rules],
                    "scripts": [r.describe() for r in runtime.kubelet.rules] if runtime else [],
                    "hooks": [h.describe() for h in runtime.kubelet.hooks] if runtime else [],
                    "lostNodes": sorted(runtime.nodes.lost) if runtime else [],
                }
            )
        if parts == ["reset"] and method == "POST":
            sim.faults.remove()
            if runtime:
                runtime.kubelet.rules.clear()
                runtime.kubelet.hooks.clear()
                for node in sorted(runtime.nodes.lost):
                    runtime.nodes.restore(node)
            return _answer({"reset": True})
        if parts and parts[0] == "faults":
            return _collection(
                parts,
                method,
                body,
                sim.faults.rules,
                sim.faults.add,
                lambda rule_id: sim.faults.remove(rule_id),
            )
        if runtime is None:
            return _answer({"error": "this simulator runs no controllers (--no-controllers)"}, 400)
        kubelet = runtime.kubelet
        if parts and parts[0] == "scripts":
            return _collection(parts, method, body, kubelet.rules, kubelet.add_rule, _remover(kubelet.rules))
        if parts and parts[0] == "hooks":
            return _collection(parts, method, body, kubelet.hooks, kubelet.add_hook, _remover(kubelet.hooks))
        if len(parts) == 3 and parts[0] == "nodes" and method == "POST" and parts[2] in ("lose", "restore"):
            if parts[2] == "lose":
                node = runtime.nodes.lose(parts[1], bool(body.get("outOfService")))
            else:
                node = runtime.nodes.restore(parts[1])
            return _answer(node)
        if len(parts) == 4 and parts[0] == "pods" and parts[3] == "evict" and method == "POST":
            if not kubelet.evict(parts[1], parts[2], body.get("message")):
                return _answer({"error": f"pod {parts[1]}/{parts[2]} is not running on a node"}, 404)
            return _answer({"evicted": f"{parts[1]}/{parts[2]}"})
    except errors.ApiError as exc:
        return _answer({"error": exc.message}, exc.code)
    except (ValueError, TypeError, KeyError, re.error) as exc:
        return _answer({"error": str(exc)}, 400)
    return _answer({"error": f"no such control endpoint: {method} {request.url.path}"}, 404)


def _remover(items: list):
    def remove(item_id: int | None) -> None:
        items[:] = [i for i in items if item_id is not None and i.id != item_id]

    return remove


def _collection(parts, method, body, items, add, remove) -> Response:
    if len(parts) == 1:
        if method == "POST":
            return _answer(add(body).describe(), 201)
        if method == "GET":
            return _answer([i.describe() for i in items])
        if method == "DELETE":
            remove(None)
            return _answer({"deleted": "all"})
    if len(parts) == 2 and method == "DELETE":
        item_id = int(parts[1])
        if not any(i.id == item_id for i in items):
            return _answer({"error": f"no {parts[0]} entry {item_id}"}, 404)
        remove(item_id)
        return _answer({"deleted": item_id})
    return _answer({"error": f"no such control endpoint: {method} /_sim/{'/'.join(parts)}"}, 404)
