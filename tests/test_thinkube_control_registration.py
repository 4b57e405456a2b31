"""Registration in thinkube-control: what its own discovery reads from our ConfigMaps is right.

thinkube-control's rules come from tests/thinkube_control/discovery.py (restated from its source, lines
cited), and the same ConfigMaps also go through its real code (tests/thinkube_control/upstream.py: its files
kept unchanged in tests/reference/thinkube-control/) and both must agree.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.thinkube_control import discovery, upstream
from thinkube_pipelines.defs.images.thinkube_control import (
    CONFIGMAP_PREFIX,
    IMAGE_ANNOTATION,
    MANAGED_BY_LABEL,
    ImageManifest,
    PublishedFacts,
    configmap_name,
    manifest_configmap,
    manifest_image,
)
from thinkube_pipelines.images import load_image_definitions
from thinkube_pipelines.kubernetes import validation

IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"
REGISTRY = "harbor.thinkube.example.org"
PROJECT = "library"
NAMESPACE = "thinkube-pipelines"
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@pytest.fixture(scope="module")
def images():
    return load_image_definitions(IMAGES_DIR)


def digest_of(name: str, build: int = 1) -> str:
    return "sha256:" + hashlib.sha256(f"{name}/{build}".encode()).hexdigest()


def built(name: str, build: int = 1) -> tuple[str, datetime, str]:
    """Build number `build` of image `name`, made up and stable: its digest, its time and its version tag."""
    digest = digest_of(name, build)
    built_at = datetime(2026, 3, build, 12, 30, tzinfo=UTC)
    return digest, built_at, f"{built_at:%Y.%m.%d}-{digest.removeprefix('sha256:')[:7]}"


def facts(name: str, build: int = 1) -> PublishedFacts:
    digest, built_at, version_tag = built(name, build)
    return PublishedFacts(
        registry=REGISTRY,
        repository=f"{PROJECT}/{name}",
        harbor_project=PROJECT,
        digest=digest,
        version_tag=version_tag,
        size=1_000_000 * (len(name) + build),
        built_at=built_at,
    )


def configmaps(images, build: int = 1) -> list[dict]:
    return [manifest_configmap(d, facts(d.name, build), namespace=NAMESPACE).to_dict() for d in images]


def thinkube_system_manifest() -> dict:
    """A ConfigMap of the kind thinkube's own playbooks write: a system image, not a Jupyter one."""
    manifest = {
        "manifest_version": "1.0",
        "images": [
            {
                "name": "alpine",
                "registry": REGISTRY,
                "repository": "library/alpine",
                "tag": "3.20",
                "source_url": "docker.io/library/alpine:3.20",
                "destination_url": f"{REGISTRY}/library/alpine:3.20",
                "category": "system",
                "protected": True,
                "metadata": {"purpose": "base"},
            }
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "harbor-system-images",
            "namespace": "registry",
            "labels": {"thinkube.io/image-manifest": "true", "thinkube.io/category": "system"},
        },
        "data": {"manifest.json": json.dumps(manifest)},
    }


def unlabelled() -> dict:
    cm = thinkube_system_manifest()
    cm["metadata"] = {"name": "not-a-manifest", "namespace": "default", "labels": {"app": "x"}}
    return cm


def thinkube_control_reads(cms: list[dict], table: discovery.Table | None = None) -> discovery.Table:
    table = table or discovery.Table()
    table.sync(discovery.discover(cms))
    return table


# --- the mapping ---------------------------------------------------------------------------------------


def test_manifest_entry_carries_what_discovery_reads(images):
    definition = images["jupyter-ml-gpu"]
    published = facts("jupyter-ml-gpu")
    entry = manifest_image(definition, published).model_dump(mode="json")
    assert entry["name"] == "jupyter-ml-gpu"
    assert entry["registry"] == REGISTRY
    assert entry["repository"] == "library/jupyter-ml-gpu"
    assert entry["tag"] == "latest"
    assert entry["destination_url"] == f"{REGISTRY}/library/jupyter-ml-gpu:latest"
    assert entry["description"] == definition.spec.description
    assert (entry["category"], entry["source"], entry["protected"]) == ("user", "built", False)
    assert entry["harbor_project"] == PROJECT
    assert entry["mirror_date"] == "2026-03-01T12:30:00Z"
    assert entry["digest"] == published.digest
    assert entry["size_bytes"] == str(published.size)
    assert entry["metadata"] == {
        "purpose": "jupyter",
        "display_name": "ML (GPU)",
        "image": f"{REGISTRY}/library/jupyter-ml-gpu@{published.digest}",
        "digest": published.digest,
        "version_tag": published.version_tag,
        "gpu_required": True,
        "cpu_limit": 8.0,
        "mem_limit": "32G",
        "default": False,
        "tags": ["pytorch", "cuda", "transformers"],
    }


def test_one_configmap_per_image_labelled_for_discovery(images):
    cms = configmaps(images)
    assert len(cms) == len(images) == len({cm["metadata"]["name"] for cm in cms})
    for definition, cm in zip(images, cms, strict=True):
        assert cm["apiVersion"] == "v1" and cm["kind"] == "ConfigMap"
        assert cm["metadata"]["name"] == f"{CONFIGMAP_PREFIX}{definition.name}"
        assert cm["metadata"]["namespace"] == NAMESPACE
        assert cm["metadata"]["labels"] == {
            "thinkube.io/image-manifest": "true",
            "thinkube.io/category": "user",
            MANAGED_BY_LABEL: "thinkube-pipelines",
        }
        assert cm["metadata"]["annotations"] == {IMAGE_ANNOTATION: definition.name}
        manifest = json.loads(cm["data"]["manifest.json"])
        assert manifest["manifest_version"] == "1.0"
        assert [image["name"] for image in manifest["images"]] == [definition.name]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_configmaps_validate_strictly(images, version):
    for cm in configmaps(images):
        assert validation.validate(cm, version, strict=True) == version.rsplit(".", 1)[0]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_strict_validation_would_catch_a_wrong_configmap(images, version):
    cm = configmaps(images)[0]
    cm["data"]["manifest.json"] = {"not": "a string"}
    with pytest.raises(validation.ManifestError):
        validation.validate(cm, version, strict=True)
    cm = configmaps(images)[0]
    cm["metadata"]["labelz"] = {}
    with pytest.raises(validation.ManifestError):
        validation.validate(cm, version, strict=True)


def test_manifest_json_is_deterministic(images):
    first = configmaps(images)
    again = configmaps(images)
    assert [cm["data"]["manifest.json"] for cm in first] == [cm["data"]["manifest.json"] for cm in again]
    for cm in first:
        text = cm["data"]["manifest.json"]
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False)
        assert ImageManifest.model_validate_json(text).to_json() == text


@pytest.mark.parametrize(
    ("names"),
    [("jupyter-base",), ("a_b", "a-b", "a.b", "a__b"), ("x" * 128,), ("ml.v2_cuda",)],
)
def test_configmap_names_are_valid_and_distinct(names):
    made = [configmap_name(name) for name in names]
    assert len(set(made)) == len(names)
    for name in made:
        assert len(name) <= 253 and DNS_SUBDOMAIN.match(name), name
    assert configmap_name("jupyter-base") == "thinkube-pipelines-image-jupyter-base"


# --- what thinkube-control reads -----------------------------------------------------------------------


def test_jupyter_list_shows_our_images(images):
    cms = [unlabelled(), *configmaps(images), thinkube_system_manifest()]
    table = thinkube_control_reads(cms)
    listed = discovery.jupyter_list(table)
    ours = sorted(images, key=lambda d: configmap_name(d.name))  # the API lists by (namespace, name)
    assert [item["name"] for item in listed] == [d.name for d in ours]
    assert [item["display_name"] for item in listed] == [d.spec.display_name for d in ours]
    assert [item["description"] for item in listed] == [d.spec.description for d in ours]
    # thinkube-control makes its first row the default, whatever the image says (jupyter_images.py:57)
    assert [item["default"] for item in listed] == [True] + [False] * (len(ours) - 1)
    for item, definition in zip(listed, ours, strict=True):
        assert item["metadata"] == {
            "image_size": None,  # discovery never sets size_bytes
            "registry": REGISTRY,
            "repository": f"{PROJECT}/{definition.name}",
            "tag": "latest",
        }
    # The digest and purpose are not served by the Jupyter list; they are in the row's metadata, which
    # GET /api/v1/harbor/images/{id} serves (container_images.py:121).
    by_name = {row.name: row for row in table.rows}
    for definition in ours:
        row = by_name[definition.name]
        published = facts(definition.name)
        assert row.image_metadata["purpose"] == "jupyter"
        assert row.image_metadata["display_name"] == definition.spec.display_name
        assert row.image_metadata["image"] == f"{REGISTRY}/{PROJECT}/{definition.name}@{published.digest}"
        assert row.image_metadata["digest"] == published.digest
        assert row.image_metadata["default"] == definition.spec.default
        assert (row.category, row.protected, row.source, row.harbor_project) == (
            "user",
            False,
            "built",
            "library",
        )
        assert row.mirror_date == datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
        assert row.digest is None  # the model's digest column: discovery does not read it
    assert by_name["alpine"].category == "system"
    assert len(table.rows) == len(images) + 1


def test_a_rebuild_updates_the_same_row(images):
    table = thinkube_control_reads(configmaps(images, build=1))
    before = discovery.jupyter_list(table)
    table = thinkube_control_reads(configmaps(images, build=2), table)
    assert len(table.rows) == len(images)
    assert discovery.jupyter_list(table) == before
    for row in table.rows:
        assert row.image_metadata["digest"] == digest_of(row.name, 2)
        assert row.image_metadata["image"].endswith(f"@{digest_of(row.name, 2)}")


def test_the_version_tag_as_row_tag_would_list_every_build(images):
    """Why the row's tag is the moving tag: rows are keyed by tag and never deleted."""
    table = discovery.Table()
    for build in (1, 2):
        cms = []
        for d in images:
            published = facts(d.name, build)
            pinned = published.model_copy(update={"listed_tag": published.version_tag})
            cms.append(manifest_configmap(d, pinned, namespace=NAMESPACE).to_dict())
        table = thinkube_control_reads(cms, table)
    assert len(discovery.jupyter_list(table)) == 2 * len(images)


def test_removing_an_image_leaves_its_row(images):
    """Discovery only upserts: deleting our ConfigMap stops re-adding the image, the row stays until
    deleted through thinkube-control's API (harbor_images.py:410-438; allowed as category user)."""
    cms = configmaps(images)
    table = thinkube_control_reads(cms)
    table = thinkube_control_reads(cms[1:], table)
    assert cms[0]["metadata"]["annotations"][IMAGE_ANNOTATION] in {row.name for row in table.rows}
    fresh = thinkube_control_reads(cms[1:])
    assert cms[0]["metadata"]["annotations"][IMAGE_ANNOTATION] not in {row.name for row in fresh.rows}


def test_why_category_user_and_destination_url(images):
    """An unknown category label aborts the whole discovery; an entry without destination_url, or with a
    category outside system/user, is refused by the table."""
    cms = configmaps(images)
    wrong_label = json.loads(json.dumps(cms[0]))
    wrong_label["metadata"]["labels"]["thinkube.io/category"] = "jupyter"
    with pytest.raises(KeyError):
        discovery.discover([*cms, wrong_label])
    for key, value in (("destination_url", None), ("category", "jupyter")):
        bad = with_entry(cms[0], **{key: value})
        assert thinkube_control_reads([bad]).rows == []


def with_entry(cm: dict, **changes) -> dict:
    """`cm` with its (single) manifest entry changed."""
    cm = json.loads(json.dumps(cm))
    manifest = json.loads(cm["data"]["manifest.json"])
    manifest["images"][0].update(changes)
    cm["data"]["manifest.json"] = json.dumps(manifest)
    return cm


def one_refused(images) -> tuple[list[dict], list[str]]:
    """Our ConfigMaps with jupyter-ml-cpu's entry lacking destination_url, and the images a sync keeps:
    the refused row rolls back the rows synced before it in the same sync (image_discovery.py:260-266)."""
    cms = [
        with_entry(cm, destination_url=None)
        if cm["metadata"]["annotations"][IMAGE_ANNOTATION] == "jupyter-ml-cpu"
        else cm
        for cm in configmaps(images)
    ]
    names = sorted(images.names, key=configmap_name)
    return cms, names[names.index("jupyter-ml-cpu") + 1 :]


def test_one_refused_entry_loses_the_earlier_ones_of_its_sync(images):
    """Why every entry must be valid on its own: one refused row takes the others of its sync with it."""
    cms, kept = one_refused(images)
    assert [row.name for row in thinkube_control_reads(cms).rows] == kept
    assert kept != sorted(images.names)


# --- the real thinkube-control code --------------------------------------------------------------------


@pytest.fixture(scope="module")
def thinkube_control():
    return upstream.load()


def row_view(row) -> dict:
    return {
        "name": row.name,
        "registry": row.registry,
        "repository": row.repository,
        "tag": row.tag,
        "destination_url": row.destination_url,
        "description": row.description,
        "category": row.category,
        "source": row.source,
        "protected": row.protected,
        "harbor_project": row.harbor_project,
        "metadata": row.image_metadata,
        "digest": row.digest,
        "size_bytes": row.size_bytes,
    }


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")
def test_thinkube_control_own_code_agrees(images, thinkube_control):
    control = upstream.Control(thinkube_control)
    table = discovery.Table()
    for build in (1, 2):
        cms = [unlabelled(), *configmaps(images, build), thinkube_system_manifest()]
        discovered = control.discover(cms)
        table = thinkube_control_reads(cms, table)
        assert {k: len(v) for k, v in discovered.items()} == {"system": 1, "user": len(images)}
        assert control.jupyter_list() == discovery.jupyter_list(table)
        assert [row_view(r) for r in control.rows()] == [row_view(r) for r in table.rows]
    listed = control.jupyter_list()
    assert {item["name"] for item in listed} == set(images.names)


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")
def test_thinkube_control_own_code_refuses_what_the_restatement_refuses(images, thinkube_control):
    cms = configmaps(images)
    wrong_label = json.loads(json.dumps(cms[0]))
    wrong_label["metadata"]["labels"]["thinkube.io/category"] = "jupyter"
    with pytest.raises(KeyError):
        upstream.Control(thinkube_control).discover([*cms, wrong_label])
    for key, value in (("destination_url", None), ("category", "jupyter")):
        bad = with_entry(cms[0], **{key: value})
        control = upstream.Control(thinkube_control)
        control.discover([bad])
        assert control.rows() == []


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")
def test_thinkube_control_own_code_loses_the_earlier_rows_too(images, thinkube_control):
    cms, kept = one_refused(images)
    control = upstream.Control(thinkube_control)
    control.discover(cms)
    assert [row.name for row in control.rows()] == kept
