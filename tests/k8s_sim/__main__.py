"""`python -m tests.k8s_sim --port N [--host 127.0.0.1] [--field-validation Strict]`: serve the simulator."""

from __future__ import annotations

import argparse

import uvicorn

from tests.k8s_sim.app import Simulator
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
    args = parser.parse_args()
    store = Store(history_size=args.history_size, field_validation=args.field_validation)
    simulator = Simulator(store, bookmark_interval_s=args.bookmark_interval)
    uvicorn.run(simulator.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
