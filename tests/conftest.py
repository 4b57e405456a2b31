"""Shared pytest configuration: real services are started by fixture plugins, one module per service."""

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
