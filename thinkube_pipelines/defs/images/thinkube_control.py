"""How an image definition appears in thinkube-control: the one mapping from image.yaml plus what the
publish step recorded to the ConfigMap that thinkube-control's own image discovery reads.

thinkube-control (github.com/thinkube/thinkube-control, read at commit
77f207fd3d9fbd9cfb88f29300526efd4051035e, Apache-2.0) lists every ConfigMap labelled
`thinkube.io/image-manifest=true` in all namespaces, parses `data["manifest.json"]`
(`{"manifest_version": "1.0", "images": [...]}`) into rows of its `container_images` table keyed by
(registry, repository, tag), and serves as Jupyter images the rows whose `metadata.purpose` is `jupyter`
(backend/app/services/image_discovery.py, backend/app/api/jupyter_images.py). The choices below follow
what that code does, line by line; tests/thinkube_control/discovery.py restates it with the lines cited.

Decisions:

- One ConfigMap per image, not one per code location. Images of a run are published concurrently; with
  one object per image each `catalog_entry` step writes only its own ConfigMap (create or replace, no
  read-modify-write, no resourceVersion conflicts between builds). thinkube-control merges any number of
  labelled ConfigMaps into one list (image_discovery.py:69-84) and de-duplicates by (registry,
  repository, tag) (image_discovery.py:215-227), so splitting costs nothing, and one image stays far
  from a ConfigMap's 1 MiB limit.
- The row's `tag` is the moving tag (`latest` by default), not the version tag: thinkube-control keys
  rows on (registry, repository, tag) and never deletes a row in a sync (image_discovery.py:230-266),
  so a tag per build would leave one stale row, and one more entry in the Jupyter list, per rebuild. On
  a rebuild the same row is updated in place (description, category, protected, metadata:
  image_discovery.py:239-245).
- The digest travels in `metadata` (`digest`, and `image`, the pullable `registry/repository@digest`,
  with `version_tag`): discovery copies `metadata` verbatim into the row (image_discovery.py:194) and
  updates it on every sync, while it reads no top-level `digest` (image_discovery.py:182-196; the
  model's `digest` column stays empty). The entry still carries top-level `digest` and `size_bytes`,
  named as the model's columns (backend/app/models/container_images.py:91-92), for a reader that takes
  them; today's ignores unknown keys (it only calls `data.get`).
- Category `user`, `protected: false`, `source: "built"`: thinkube-control knows only `system` and
  `user` (a check constraint, container_images.py:30-33; an unknown label value raises KeyError in
  discover_all, image_discovery.py:61,83-84, and aborts the whole discovery), and only unprotected `user`
  images can be deleted through its API (backend/app/api/harbor_images.py:410-438).
- `destination_url` is set (`registry/repository:tag`): the column is NOT NULL (container_images.py:54)
  and discovery gives it no default (image_discovery.py:188), so an entry without it fails to insert.
- Removal is not automated: removing an image folder leaves its ConfigMap. An operator deletes it (found by
  the `managed-by` label and the image annotation), which stops thinkube-control re-adding it; the row it
  already imported stays until removed through its API (DELETE /api/v1/harbor/images/{id}), since
  discovery only upserts. (Automating it would need `list` and `delete` on configmaps there.)
- thinkube-control picks its own default Jupyter image (the first row of its table,
  jupyter_images.py:57); ours is recorded as `metadata.default` for whoever reads the row.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from thinkube_pipelines import oci
from thinkube_pipelines.images import ImageDefinition

MANIFEST_LABEL = "thinkube.io/image-manifest"
CATEGORY_LABEL = "thinkube.io/category"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "thinkube-pipelines"
IMAGE_ANNOTATION = "thinkube-pipelines.thinkube.io/image"
"""The image a ConfigMap registers (an annotation: an image name may be longer than a label value's 63)."""
MANIFEST_KEY = "manifest.json"
MANIFEST_VERSION = "1.0"
CATEGORY = "user"
"""thinkube-control's category for images it may delete; `system` is the platform's own."""
SOURCE = "built"
PURPOSE_JUPYTER = "jupyter"
CONFIGMAP_PREFIX = "thinkube-pipelines-image-"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
Namespace = Annotated[str, StringConstraints(pattern=rf"^{_DNS_LABEL}$", max_length=63)]
Digest = Annotated[str, StringConstraints(pattern=rf"^{oci.SHA256_DIGEST_PATTERN}$")]
Tag = Annotated[str, StringConstraints(pattern=rf"^{oci.TAG_PATTERN}$")]
Repository = Annotated[str, StringConstraints(pattern=rf"^{oci.REPOSITORY_PATTERN}$", max_length=255)]
RegistryHost = Annotated[str, StringConstraints(pattern=rf"^{oci.DOMAIN_PATTERN}$")]


class PublishedFacts(BaseModel):
    """What the publish step established about one image: where it is and what it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: RegistryHost
    """The registry host[:port] (Harbor), as pulls name it."""
    repository: Repository
    """`<harbor_project>/<image name>`."""
    harbor_project: Annotated[str, Field(min_length=1)]
    digest: Digest
    version_tag: Tag
    """The immutable tag of this digest (recorded in metadata, never the row's tag)."""
    listed_tag: Tag = "latest"
    """The moving tag the publish step points at this digest: the tag thinkube-control keys its row on."""
    size: Annotated[int, Field(ge=0)]
    built_at: AwareDatetime


class ThinkubeControlMetadata(BaseModel):
    """`metadata` of a manifest entry: copied verbatim into thinkube-control's row (its JSON column)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    purpose: Literal["jupyter"] = PURPOSE_JUPYTER
    display_name: str
    image: str
    """The pullable reference by digest: what a spawner should run."""
    digest: Digest
    version_tag: Tag
    gpu_required: bool
    cpu_limit: float
    mem_limit: str
    default: bool
    tags: list[str]


class ThinkubeControlImage(BaseModel):
    """One entry of `manifest.json`'s `images`: the keys thinkube-control's discovery reads, plus the
    model's `digest` and `size_bytes` columns, which today's discovery does not read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=255)]
    registry: RegistryHost
    repository: Repository
    tag: Tag
    description: str
    category: Literal["user"] = CATEGORY
    source: Literal["built"] = SOURCE
    protected: bool = False
    destination_url: str
    mirror_date: str
    """When it was built, ISO 8601 in UTC with `Z` (discovery parses it with fromisoformat)."""
    harbor_project: str
    metadata: ThinkubeControlMetadata
    digest: Digest
    size_bytes: str
    """A string, as the model's column (String(50)) holds it."""


class ImageManifest(BaseModel):
    """The whole `manifest.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest_version: Literal["1.0"] = MANIFEST_VERSION
    images: list[ThinkubeControlImage]

    def to_json(self) -> str:
        """Deterministic text (sorted keys, fixed indentation), so an unchanged image rewrites nothing."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False)


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(max_length=253)]
    namespace: Namespace
    labels: dict[str, str]
    annotations: dict[str, str]


class ManifestConfigMap(BaseModel):
    """A v1 ConfigMap holding one image's manifest, as written to the Kubernetes API."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    api_version: Literal["v1"] = Field("v1", alias="apiVersion")
    kind: Literal["ConfigMap"] = "ConfigMap"
    metadata: ObjectMeta
    data: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """The object as the Kubernetes API (and `kubectl apply`) takes it."""
        return self.model_dump(mode="json", by_alias=True)

    @property
    def manifest(self) -> ImageManifest:
        return ImageManifest.model_validate_json(self.data[MANIFEST_KEY])


def configmap_name(image_name: str) -> str:
    """`thinkube-pipelines-image-<name>`: a valid object name for every OCI image name. A name with `_`
    or `.` (allowed in image names, not in this name) gets them as `-` plus a short hash of the original,
    so two image names never share a ConfigMap."""
    safe = re.sub(r"[._]+", "-", image_name)
    if safe != image_name:
        safe = f"{safe}-{hashlib.sha256(image_name.encode()).hexdigest()[:8]}"
    return f"{CONFIGMAP_PREFIX}{safe}"


def manifest_image(definition: ImageDefinition, facts: PublishedFacts) -> ThinkubeControlImage:
    """The manifest entry thinkube-control imports as one row of its image table."""
    spec = definition.spec
    return ThinkubeControlImage(
        name=spec.name,
        registry=facts.registry,
        repository=facts.repository,
        tag=facts.listed_tag,
        description=spec.description,
        destination_url=f"{facts.registry}/{facts.repository}:{facts.listed_tag}",
        mirror_date=facts.built_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        harbor_project=facts.harbor_project,
        metadata=ThinkubeControlMetadata(
            display_name=spec.display_name,
            image=f"{facts.registry}/{facts.repository}@{facts.digest}",
            digest=facts.digest,
            version_tag=facts.version_tag,
            gpu_required=spec.gpu_required,
            cpu_limit=spec.cpu_limit,
            mem_limit=spec.mem_limit,
            default=spec.default,
            tags=list(spec.tags),
        ),
        digest=facts.digest,
        size_bytes=str(facts.size),
    )


def manifest_configmap(
    definition: ImageDefinition, facts: PublishedFacts, *, namespace: str
) -> ManifestConfigMap:
    """The ConfigMap that registers `definition` with thinkube-control, in `namespace` (any: discovery
    lists all namespaces)."""
    manifest = ImageManifest(images=[manifest_image(definition, facts)])
    return ManifestConfigMap(
        metadata=ObjectMeta(
            name=configmap_name(definition.spec.name),
            namespace=namespace,
            labels={MANIFEST_LABEL: "true", CATEGORY_LABEL: CATEGORY, MANAGED_BY_LABEL: MANAGED_BY},
            annotations={IMAGE_ANNOTATION: definition.spec.name},
        ),
        data={MANIFEST_KEY: manifest.to_json()},
    )
