"""A Kubernetes API server simulator for the tests (issue 8): see app.py (HTTP), store.py (objects, events),
validation.py (the real OpenAPI schemas), resources.py (kinds and discovery), errors.py (Status bodies).

Run it with `python -m tests.k8s_sim --port N`; tests start it with `tests.fixtures.kubernetes`.
"""
