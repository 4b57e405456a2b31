"""thinkube_pipelines/kubernetes/validation.py: the schemas kubernetes-validate ships, each loaded once.

The cached validator must answer exactly as `kubernetes_validate.validate` does, strict mode included
(the same schema version, the same verdict, the same first error at the same path), for the oldest and
newest Kubernetes minor the project checks; and its error names the object, the version and the field.
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from thinkube_pipelines.hub.render import KUBERNETES_VERSIONS, node_reader_manifests
from thinkube_pipelines.hub.settings import HubSettings
from thinkube_pipelines.hub.volumes import volume_manifests
from thinkube_pipelines.kubernetes import validation

SETTINGS = HubSettings(
    public_url="https://jupyter.example.org",
    oidc_issuer="https://auth.example.org/realms/thinkube",
    catalog_url="http://catalog.example.org",
    registry_url="https://registry.example.org",
    filer_url="http://filer.example.org:8888",
)


def valid_objects() -> list[dict[str, Any]]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "n", "labels": {"a": "b"}},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "registry.example.org/x@sha256:" + "0" * 64,
                    "resources": {"limits": {"nvidia.com/gpu": "1", "cpu": 2, "memory": "8Gi"}},
                }
            ],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
    return [*volume_manifests(SETTINGS), *node_reader_manifests(SETTINGS), pod]


def _set(obj: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    node = obj
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return obj


def _drop(obj: dict[str, Any], path: list[Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    node = obj
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return obj


def invalid_objects() -> dict[str, dict[str, Any]]:
    objects = {f"{o['kind']}/{o['metadata']['name']}": o for o in valid_objects()}
    pv = next(o for o in objects.values() if o["kind"] == "PersistentVolume")
    role = next(o for o in objects.values() if o["kind"] == "ClusterRole")
    binding = next(o for o in objects.values() if o["kind"] == "ClusterRoleBinding")
    pod = objects["Pod/p"]
    return {
        "unknown top-level field": _set(role, ["rulez"], []),
        "unknown nested field": _set(pod, ["spec", "containers", 0, "resourcez"], {}),
        "unknown field in a CSI source": _set(pv, ["spec", "csi", "bogus"], "x"),
        "wrong type": _set(role, ["rules", 0, "verbs"], "get"),
        "wrong type, nested": _set(pod, ["spec", "containers", 0, "name"], 7),
        "missing required": _drop(binding, ["roleRef"]),
        "missing required, nested": _drop(pv, ["spec", "csi", "driver"]),
        "missing required in a list item": _drop(pod, ["spec", "containers", 0, "name"]),
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("strict", [True, False])
def test_valid_objects_agree(version: str, strict: bool) -> None:
    for obj in valid_objects():
        expected = kubernetes_validate.validate(copy.deepcopy(obj), version, strict=strict)
        assert validation.validate(obj, version, strict=strict) == expected


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", list(invalid_objects()))
def test_invalid_objects_agree(version: str, case: str) -> None:
    obj = invalid_objects()[case]
    with pytest.raises(kubernetes_validate.ValidationError) as theirs:
        kubernetes_validate.validate(copy.deepcopy(obj), version, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError) as ours:
        validation.validate(obj, version, strict=True)
    mine, reference = ours.value, theirs.value
    assert isinstance(mine, validation.ManifestError)
    assert (mine.message, list(mine.absolute_path), mine.validator, mine.version) == (
        reference.message,
        list(reference.absolute_path),
        reference.validator,
        reference.version,
    )
    # and the text names the object, the version and the field
    name = obj["metadata"]["name"]
    text = str(mine)
    assert text.startswith(f'{obj["kind"]} "{name}" (Kubernetes {reference.version}): at ')
    assert validation.field_path(reference.absolute_path) in text and reference.message in text


def test_strict_refuses_what_the_plain_schema_allows() -> None:
    obj = invalid_objects()["unknown top-level field"]
    version = KUBERNETES_VERSIONS[0]
    assert validation.validate(obj, version, strict=False) == kubernetes_validate.validate(
        copy.deepcopy(obj), version, strict=False
    )
    with pytest.raises(validation.ManifestError, match=r"Additional properties are not allowed \('rulez'"):
        validation.validate(obj, version, strict=True)


def test_the_error_path_names_list_items() -> None:
    obj = invalid_objects()["unknown nested field"]
    with pytest.raises(validation.ManifestError) as failed:
        validation.validate(obj, KUBERNETES_VERSIONS[-1])
    assert failed.value.field == "spec.containers[0]"
    assert str(failed.value).startswith('Pod "p" (Kubernetes 1.37): at spec.containers[0]: ')


def test_versions_and_missing_schemas_as_kubernetes_validate() -> None:
    role = node_reader_manifests(SETTINGS)[0]
    for version in ("1.30", "v1.30.4", "1.31.0", "1.37.0"):
        assert validation.validate(role, version) == kubernetes_validate.validate(
            copy.deepcopy(role), version, strict=True
        )
    with pytest.raises(validation.VersionNotSupportedError):
        validation.validate(role, "1.99.0")
    unknown = {"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
        kubernetes_validate.validate(unknown, "1.30.0", strict=True)
    with pytest.raises(validation.SchemaNotFoundError) as missing:
        validation.validate(unknown, "1.30.0")
    assert "Widget" in missing.value.message and "1.30" in missing.value.message


def test_each_schema_is_loaded_once() -> None:
    validation.validate(valid_objects()[0], KUBERNETES_VERSIONS[0])
    loads = validation._definitions_resource.cache_info()
    builds = validation._validator.cache_info()
    for obj in valid_objects() * 3:
        for version in KUBERNETES_VERSIONS:
            validation.validate(obj, version)
    assert validation._definitions_resource.cache_info().currsize <= loads.currsize + len(KUBERNETES_VERSIONS)
    assert validation._validator.cache_info().misses - builds.misses <= 5 * len(KUBERNETES_VERSIONS)
    assert validation._validator.cache_info().hits > builds.hits


def test_definitions_are_kubernetes_validates() -> None:
    assert "io.k8s.api.core.v1.PodSpec" in validation.definitions("1.30.0", strict=False)["$defs"]
