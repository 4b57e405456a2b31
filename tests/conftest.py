"""Shared pytest configuration: real services are started by fixture plugins, one module per service."""

import signal

pytest_plugins = [
    "tests.fixtures.seaweedfs",
    "tests.fixtures.postgres",
    "tests.fixtures.oidc",
    "tests.fixtures.catalog",
    "tests.fixtures.buildah",
    "tests.fixtures.registry",
    "tests.fixtures.docker",
    "tests.fixtures.kubernetes",
    "tests.fixtures.tools",
    "tests.fixtures.hub",
    "tests.fixtures.dagster_server",
    "tests.fixtures.browser",
    "tests.fixtures.image_stack",
    "tests.fixtures.git_server",
]


def pytest_configure(config):
    """Processes the tests start get Ctrl-C and SIGTERM as a user's terminal gives them. A run started as a
    shell's background job (`make test &`, some CI runners) has SIGINT ignored, and every process it starts
    would inherit that; `dagster dev`, which maps SIGTERM to its SIGINT handler, then ignored the tests'
    SIGTERM and was killed without removing its temporary home."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
