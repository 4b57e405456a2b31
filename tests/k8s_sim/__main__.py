"""`python -m tests.k8s_sim --port N [options]`: serve the simulator (see the package docstring)."""

from __future__ import annotations

import argparse
import json

import uvicorn

from tests.k8s_sim import cluster
from tests.k8s_sim.app import Simulator
from tests.k8s_sim.runtime import Runtime
from tests.k8s_sim.store import Store
from tests.k8s_sim.validation import FIELD_VALIDATION


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--field-validation",
        choices=FIELD_VALIDATION,
        default="Strict",
        help="what an absent fieldValidation parameter means (the real server: Warn)",
    )
    parser.add_argument("--history-size", type=int, default=10000)
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    parser.add_argument(
        "--seed", choices=sorted(cluster.SEEDS), default="empty", help="the nodes the cluster starts with"
    )
    parser.add_argument(
        "--no-controllers",
        action="store_true",
        help="serve the API only: no scheduler, kubelet or controllers",
    )
    parser.add_argument(
        "--job-backoff-seconds",
        type=float,
        default=10.0,
        help="the Job controller's pod-recreation backoff base (the real one: 10 s)",
    )
    parser.add_argument(
        "--restart-backoff-seconds",
        type=float,
        default=10.0,
        help="the kubelet's CrashLoopBackOff base (the real one: 10 s)",
    )
    parser.add_argument(
        "--kubelet-step-seconds", type=float, default=0.02, help="how long each step of a pod's start takes"
    )
    parser.add_argument("--hooks", help="a JSON file: a list of exec hooks (see kubelet.py)")
    args = parser.parse_args()
    store = Store(history_size=args.history_size, field_validation=args.field_validation)
    cluster.seed(store, args.seed)
    runtime = None
    if not args.no_controllers:
        runtime = Runtime(
            store,
            job_backoff_base_s=args.job_backoff_seconds,
            restart_backoff_base_s=args.restart_backoff_seconds,
            kubelet_step_s=args.kubelet_step_seconds,
        )
        runtime.sim_url = f"http://{args.host}:{args.port}"
        if args.hooks:
            with open(args.hooks) as handle:
                for hook in json.load(handle):
                    runtime.kubelet.add_hook(hook)
    simulator = Simulator(store, bookmark_interval_s=args.bookmark_interval, runtime=runtime)
    uvicorn.run(simulator.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
