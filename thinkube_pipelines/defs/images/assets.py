"""The asset factory: one chain `<image>/source -> build -> published -> catalog_entry` per image folder.

Adding a folder to images/ adds its chain; nothing here names an image. `<image>/source` (and a root
image's `<image>/base`) are observed, not made (sources.py, automation.py); the three assets an image's
pipeline makes and its blocking checks are one multi-asset (one step, subsettable: a run may select any
of them), so that a code location with hundreds of images loads fast; a child's chain depends on its
parent's `published` asset and builds FROM the digest that asset recorded. Each made asset carries the
automation condition of automation.py. Stages hand nothing to each other in memory or on disk: each
records what it made (records.py) and the next reads that record from the instance, the registry or the
catalog, in this run or a later one.
"""

import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import dagster as dg

from thinkube_pipelines.builders.base import (
    BuildContext,
    BuildError,
    ImageBuilder,
    ImageRunner,
)
from thinkube_pipelines.defs.images.automation import (
    BASE_STAGE,
    BUILD_CONDITION,
    AutomationSettings,
    upstream_bases,
)
from thinkube_pipelines.defs.images.build_plan import (
    BaseResolutionError,
    BuildPlan,
    pinned_base,
    plan_build,
)
from thinkube_pipelines.defs.images.catalog_item import catalog_upsert
from thinkube_pipelines.defs.images.checks import check_specs, gpu_check, smoke_check
from thinkube_pipelines.defs.images.jobs import FORCE_REBUILD_TAG
from thinkube_pipelines.defs.images.keys import (
    BUILD_POOL,
    IMAGE_PART,
    OWNERS,
    PART_TAG,
    asset_key,
    gpu_check_key,
    group_name,
    smoke_check_key,
)
from thinkube_pipelines.defs.images.records import BuiltImage, PublishedImage, log_block
from thinkube_pipelines.defs.images.sources import SOURCE_STAGE, ImageSource, image_sources, observed_commit
from thinkube_pipelines.defs.images.thinkube_control import PublishedFacts, manifest_configmap
from thinkube_pipelines.defs.resources import (
    CATALOG_TARGET,
    THINKUBE_CONTROL_NAMESPACE_ENV,
    THINKUBE_CONTROL_TARGET,
    BuildSettings,
    CatalogResource,
)
from thinkube_pipelines.images import ImageDefinition, ImageSet
from thinkube_pipelines.images.source import source_hashes
from thinkube_pipelines.kubernetes.cluster import KUBECONFIG_ENV, KubernetesCluster, KubernetesError
from thinkube_pipelines.registry.resource import Registry

if TYPE_CHECKING:
    from thinkube_pipelines.registry.client import RegistryClient

MILESTONE = re.compile(
    r"STEP \d+/\d+: |^#\d+ \[[^\]]+\] |^Writing manifest|^digest: sha256:|\b(error|fatal)\b", re.IGNORECASE
)
"""Build log lines that also go to the event log: each step (buildah's `STEP n/m:`, BuildKit's
`#n [stage i/n]`), the push, and errors. Every line goes to the step's captured stdout."""


def version_tag(created: datetime, digest: str) -> str:
    """The immutable tag of an image: the day it was built and its digest (`2026.11.25-3f2a9c1`). Naming
    the digest means a rebuild with another result gets another tag: a version tag never moves."""
    return f"{created.astimezone(UTC):%Y.%m.%d}-{digest.removeprefix('sha256:')[:7]}"


class BuildLog:
    """Where a build's lines go: every line to the step's captured stdout (the UI's raw log, a pod's log in
    the cluster), the milestones to the event log, so that a build writes tens of events, not thousands."""

    def __init__(self, context: dg.AssetExecutionContext):
        self._log = context.log

    def __call__(self, line: str) -> None:
        print(line, file=sys.stdout, flush=True)
        if MILESTONE.search(line):
            self._log.info(line)


def image_chain(
    images: ImageSet,
    definition: ImageDefinition,
    code_version: str,
    retry_policy: dg.RetryPolicy | None = None,
    source: ImageSource | None = None,
) -> dg.AssetsDefinition:
    """The three made assets of one image and its checks; `code_version` is its folder's hash chained with
    its parent's. Its `<image>/source` (and a root's `<image>/base`) are observed, not made (sources.py,
    automation.py)."""
    name = definition.name
    spec = definition.spec
    source_key, build_key = asset_key(name, SOURCE_STAGE), asset_key(name, "build")
    published_key, entry_key = asset_key(name, "published"), asset_key(name, "catalog_entry")
    parent_key = asset_key(spec.parent, "published") if spec.parent else None
    # What it builds FROM: the parent's published digest, or the root's observed upstream base.
    upstream_key = parent_key or asset_key(name, BASE_STAGE)
    common = {
        "group_name": group_name(name),
        "owners": OWNERS,
        "tags": {
            PART_TAG: IMAGE_PART,
            "thinkube/image": name,
            **({"thinkube/gpu": "true"} if spec.gpu_required else {}),
        },
    }

    def build(
        context: dg.AssetExecutionContext,
        builder: ImageBuilder,
        registry: Registry,
        build_settings: BuildSettings,
    ) -> dg.MaterializeResult:
        client = registry.client()
        try:
            if parent_key is not None:
                from_image = PublishedImage.recorded(context.instance, parent_key).image
            else:
                from_image = pinned_base(definition, build_settings.base_mirror, client)
        except BaseResolutionError as exc:
            raise dg.Failure(description=f"{name}: {exc}") from exc
        repository = registry.repository(name)
        plan = plan_build(
            definition,
            context=build_context(context),
            from_image=from_image,
            registry_host=registry.host,
            repository=repository,
            platform=build_settings.platform,
            registry=registry.access(),
        )
        force = context.run.tags.get(FORCE_REBUILD_TAG, "").lower() == "true"
        digest = None if force else client.digest_of(repository, plan.tag)
        result = None
        if digest is not None:
            context.log.info(f"{repository}:{plan.tag} already in the registry ({digest}): not building")
        else:
            if force:
                context.log.info(f"{FORCE_REBUILD_TAG}=true: building even if the registry has {plan.tag}")
            registry.check_ready(name)  # fail before a long build, naming the registry, rather than after it
            context.log.info(f"building {name} FROM {from_image} as {plan.tag}")
            try:
                result = builder.build(plan.request, on_line=BuildLog(context))
            except BuildError as exc:
                raise dg.Failure(
                    description=str(exc),
                    metadata={"failing_step": exc.step or "", "log_tail": log_block(exc.log_tail)},
                ) from exc
            digest = result.digest
            context.log.info(f"pushed {repository}:{plan.tag} -> {digest} in {result.duration_s:.0f} s")
        record = (result is None and _recorded_build(context, digest)) or _registry_record(
            client, plan, digest, reused=result is None
        )
        duration_s = result.duration_s if result else 0.0
        metadata = {**record.metadata(), "build_duration_s": dg.MetadataValue.float(round(duration_s, 1))}
        if result is not None:
            metadata["log_tail"] = log_block(result.log_tail)  # already the tail
        return dg.MaterializeResult(
            asset_key=build_key, metadata=metadata, data_version=dg.DataVersion(digest)
        )

    def build_context(context: dg.AssetExecutionContext) -> BuildContext:
        """The image folder's files as the build receives them: from a git source, those of the commit its
        latest source observation recorded (what was observed is what is built); else the folder's."""
        commit = observed_commit(context.instance, name) if source is not None and source.remote else None
        if commit is None:
            return BuildContext.from_folder(definition.folder)
        assert source is not None
        with source.folder_at(commit) as images_root:
            context.log.info(f"{name}: building the files of commit {commit} of {source.describe()}")
            return BuildContext.from_folder(images_root / definition.folder.name)

    def _recorded_build(context: dg.AssetExecutionContext, digest: str) -> BuiltImage | None:
        """This asset's own latest record when it already holds `digest`: a reused build's facts without
        a registry request. None when the registry must be asked."""
        event = context.instance.get_latest_materialization_event(build_key)
        if event is None or event.asset_materialization is None:
            return None
        try:
            previous = BuiltImage.from_metadata(event.asset_materialization.metadata)
        except ValueError:
            return None
        return previous.model_copy(update={"reused": True}) if previous.digest == digest else None

    def _registry_record(client: "RegistryClient", plan: BuildPlan, digest: str, reused: bool) -> BuiltImage:
        """The record of `digest`, its facts read from the registry (which also proves the push landed)."""
        repository = plan.repository
        facts = client.image_facts(repository, digest)
        if facts.created is None:
            raise dg.Failure(description=f"{name}: {repository}@{digest} has no creation time in its config")
        return BuiltImage(
            image_name=name,
            image=f"{client.host}/{repository}@{digest}",
            registry=client.host,
            repository=repository,
            digest=digest,
            build_key=plan.key,
            build_tag=plan.tag,
            base_image=plan.from_image,
            size=facts.size,
            created=facts.created,
            reused=reused,
        )

    def published(
        context: dg.AssetExecutionContext, registry: Registry, build_settings: BuildSettings
    ) -> dg.MaterializeResult:
        built = BuiltImage.recorded(context.instance, build_key)
        client = registry.client()
        repository = built.repository
        served = client.digest_of(repository, built.digest)
        if served != built.digest:
            raise dg.Failure(
                description=f"registry {registry.url}: {repository}@{built.digest} is not there "
                f"(the registry answered {served or 'not found'}); rebuild {name}",
            )
        version = version_tag(built.created, built.digest)
        current = client.digest_of(repository, version)
        if current is not None and current != built.digest:
            raise dg.Failure(
                description=f"registry {registry.url}: version tag {repository}:{version} already names "
                f"{current}; version tags never move, so {built.digest} cannot take it",
                allow_retries=False,
            )
        tags = [version, *build_settings.moving_tags]
        for tag in tags:
            if (current if tag == version else client.digest_of(repository, tag)) != built.digest:
                client.tag(repository, built.digest, tag)
                context.log.info(f"{repository}:{tag} -> {built.digest}")
        metadata: dict[str, object] = {}
        if registry.flavor == "harbor":
            artifact = client.artifact(registry.project, name, built.digest)
            metadata["harbor_artifact"] = dg.MetadataValue.json(
                {"digest": artifact.digest, "tags": list(artifact.tags), "push_time": artifact.push_time}
            )
        record = PublishedImage(
            image_name=name,
            image=built.image,
            registry=built.registry,
            repository=repository,
            digest=built.digest,
            version_tag=version,
            tags=tags,
            size=built.size,
            created=built.created,
        )
        return dg.MaterializeResult(
            asset_key=published_key,
            metadata={
                **record.metadata(),
                "size_mb": dg.MetadataValue.float(round(built.size / 1e6, 1)),
                "registry_url": dg.MetadataValue.url(registry.url),
                **metadata,
            },
            data_version=dg.DataVersion(built.digest),
        )

    def catalog_entry(context: dg.AssetExecutionContext, catalog: CatalogResource) -> dg.MaterializeResult:
        published = PublishedImage.recorded(context.instance, published_key)
        targets = catalog.targets()
        metadata: dict[str, object] = {
            "digest": published.digest,
            "tag": published.version_tag,
            "registration": dg.MetadataValue.json(list(targets)),
        }
        changes = []
        if CATALOG_TARGET in targets:
            wanted = catalog_upsert(
                definition,
                registry=published.registry,
                repository=published.repository,
                tag=published.version_tag,
                digest=published.digest,
                image_size=published.size,
                last_built=published.created,
            )
            client = catalog.client()
            _, change = client.ensure(wanted)
            context.log.info(f"{name}: catalog item {change}")
            metadata["catalog_item"] = dg.MetadataValue.url(client.item_url(name))
            metadata["catalog_change"] = change
            changes.append(change)
        if THINKUBE_CONTROL_TARGET in targets:
            assert catalog.thinkube_control is not None  # targets() checked it
            change, where = register_in_thinkube_control(catalog.thinkube_control, published)
            context.log.info(f"{name}: thinkube-control ConfigMap {where} {change}")
            metadata["thinkube_control_configmap"] = where
            metadata["thinkube_control_change"] = change
            changes.append(change)
        # One word for the step: the targets' own when they agree, else "updated" (something was written).
        metadata["change"] = changes[0] if len(set(changes)) == 1 else "updated"
        return dg.MaterializeResult(
            asset_key=entry_key, metadata=metadata, data_version=dg.DataVersion(published.digest)
        )

    def register_in_thinkube_control(
        cluster: KubernetesCluster, published: PublishedImage
    ) -> tuple[str, str]:
        """Write this image's discovery ConfigMap unless it already says the same: (change, where)."""
        moving = [tag for tag in published.tags if tag != published.version_tag]
        project, _, image = published.repository.rpartition("/")
        facts = PublishedFacts(
            registry=published.registry,
            repository=published.repository,
            harbor_project=project if project and image == name else published.repository.split("/")[0],
            digest=published.digest,
            version_tag=published.version_tag,
            listed_tag=moving[0] if moving else published.version_tag,
            size=published.size,
            built_at=published.created,
        )
        namespace = cluster.default_namespace()
        configmap = manifest_configmap(definition, facts, namespace=namespace)
        where = f"{namespace}/{configmap.metadata.name}"
        try:
            return cluster.ensure_config_map(configmap.to_dict()), where
        except KubernetesError as exc:
            raise dg.Failure(
                description=f"{name}: registration in thinkube-control failed: {exc} (the namespace comes "
                f"from ${THINKUBE_CONTROL_NAMESPACE_ENV}; the cluster from ${KUBECONFIG_ENV}, else "
                "~/.kube/config, else the pod's ServiceAccount)",
                metadata={"configmap": where, "cluster": cluster.describe()},
            ) from exc

    specs = [
        dg.AssetSpec(
            build_key,
            deps=[source_key, upstream_key],
            code_version=code_version,
            automation_condition=BUILD_CONDITION,
            kinds={"docker"},
            description=f"{spec.display_name}: built from its Dockerfile and pushed under `build-<key>`; "
            "not built again while the registry serves that key.",
            **common,
        ),
        dg.AssetSpec(
            published_key,
            deps=[build_key],
            kinds={"docker"},
            automation_condition=BUILD_CONDITION,
            description=f"{spec.display_name}: digest verified in the registry and tagged with its "
            "immutable version tag (and the moving tags).",
            **common,
        ),
        dg.AssetSpec(
            entry_key,
            deps=[published_key],
            kinds={"api"},
            automation_condition=BUILD_CONDITION,
            description=f"{spec.display_name}: its item in the image catalog, which the hub reads at "
            "spawn time, and/or its ConfigMap for thinkube-control's image discovery "
            "(THINKUBE_REGISTRATION).",
            **common,
        ),
    ]

    @dg.multi_asset(
        name=group_name(name),
        specs=specs,
        check_specs=check_specs(definition, BUILD_CONDITION),
        can_subset=True,
        pool=BUILD_POOL,
        retry_policy=retry_policy,
        description=f"The chain of image {name}: whichever of its assets the run selects, in order.",
    )
    def chain(
        context: dg.AssetExecutionContext,
        builder: ImageBuilder,
        runner: ImageRunner,
        registry: Registry,
        catalog: CatalogResource,
        build_settings: BuildSettings,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        selected = context.selected_asset_keys
        if build_key in selected:
            yield build(context, builder, registry, build_settings)
        checks = context.selected_asset_check_keys
        for key, evaluate in ((smoke_check_key(name), smoke_check), (gpu_check_key(name), gpu_check)):
            if key not in checks:
                continue
            result = evaluate(context, images, definition, runner, registry, build_settings)
            yield result
            if not result.passed and result.severity == dg.AssetCheckSeverity.ERROR:
                raise dg.Failure(
                    description=f"{name}: the {key.name} check failed, nothing is published: "
                    f"{result.description}",
                    allow_retries=False,  # the same digest fails the same check again
                )
        if published_key in selected:
            yield published(context, registry, build_settings)
        if entry_key in selected:
            yield catalog_entry(context, catalog)

    return chain


def image_assets(
    images: ImageSet, automation: AutomationSettings | None = None, source: ImageSource | None = None
) -> list[dg.AssetsDefinition]:
    """Every image's chain, the observed sources of all of them, and the root images' upstream bases;
    `automation` gives the retry policy (None: no retries), `source` where the folders come from (None:
    the folders `images` was loaded from)."""
    hashes = source_hashes(images)
    policy = automation.retry_policy() if automation else None
    chains = [image_chain(images, d, hashes[d.name], policy, source) for d in images]
    bases = upstream_bases(images)
    return [image_sources(images), *([bases] if bases else []), *chains]
