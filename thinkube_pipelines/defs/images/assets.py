"""The asset factory: one chain `<image>/source -> build -> published -> catalog_entry` per image folder.

Adding a folder to images/ adds its chain; nothing here names an image. A child's `build` takes its
parent's `published` asset as an input and builds FROM the parent's exact digest.
"""

import re
from datetime import UTC, datetime

import dagster as dg

from thinkube_pipelines.builders.base import BuildError, BuildRequest, ImageBuilder
from thinkube_pipelines.catalog.entries import catalog_upsert
from thinkube_pipelines.defs.images.outputs import BuiltImage, ImageSource, PublishedImage
from thinkube_pipelines.defs.resources import CatalogResource
from thinkube_pipelines.images import ImageDefinition, ImageSet
from thinkube_pipelines.images.source import source_files, source_hash
from thinkube_pipelines.images.spec import BASE_IMAGE_ARG, PARENT_IMAGE_ARG
from thinkube_pipelines.registry.client import HarborClient
from thinkube_pipelines.registry.resource import Registry

BUILD_POOL = "image_builds"
"""Dagster concurrency pool of every build step: builds are heavy, the instance caps how many run at once."""
LOG_TAIL_LINES = 40
SOURCE_HASH_LABEL = "org.thinkube.source-hash"


def group_name(image_name: str) -> str:
    """Dagster group names are identifiers: `my-image` -> `my_image`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", image_name)


def asset_key(image_name: str, stage: str) -> dg.AssetKey:
    return dg.AssetKey([image_name, stage])


def version_tag(created: datetime, source: str) -> str:
    """The immutable tag of a build: the day it was built and its source hash (`2026.11.25-3f2a9c1`)."""
    return f"{created.astimezone(UTC):%Y.%m.%d}-{source[:7]}"


def log_block(lines: list[str] | tuple[str, ...]) -> dg.MetadataValue:
    """Log lines as a Markdown code block, how the UI shows them best."""
    return dg.MetadataValue.md("```\n" + "\n".join(lines) + "\n```")


def image_chain(images: ImageSet, definition: ImageDefinition) -> list[dg.AssetsDefinition]:
    """The four assets of one image."""
    name = definition.name
    spec = definition.spec
    group = group_name(name)
    code_version = source_hash(images, name)
    source_key, build_key = asset_key(name, "source"), asset_key(name, "build")
    published_key, entry_key = asset_key(name, "published"), asset_key(name, "catalog_entry")
    kinds = {"docker"}

    @dg.asset(
        key=source_key,
        group_name=group,
        code_version=code_version,
        kinds={"file"},
        description=f"The files of images/{definition.folder.name}/, identified by their content hash.",
    )
    def source(context: dg.AssetExecutionContext) -> dg.Output[ImageSource]:
        current = source_hash(images, name)
        files = tuple(f.as_posix() for f in source_files(definition))
        if current != code_version:
            context.log.warning(
                f"{name}: files changed since the code location loaded; reload it to see them"
            )
        return dg.Output(
            ImageSource(image_name=name, source_hash=current, files=files),
            data_version=dg.DataVersion(current),
            metadata={"source_hash": current, "files": len(files), "folder": str(definition.folder)},
        )

    def run_build(
        context: dg.AssetExecutionContext,
        builder: ImageBuilder,
        registry: Registry,
        source: ImageSource,
        parent: PublishedImage | None,
    ) -> dg.Output[BuiltImage]:
        if parent is not None:
            base_image, build_args = parent.reference, {PARENT_IMAGE_ARG: parent.reference}
        else:
            assert spec.base is not None  # the loader guarantees that a root image has a base
            build_args = builder.with_base_mirror({BASE_IMAGE_ARG: spec.base.image}, BASE_IMAGE_ARG)
            base_image = build_args[BASE_IMAGE_ARG]
        repository = registry.repository(name)
        registry.check_ready(name)  # fail before a long build, naming the registry, rather than after it
        build_tag = f"build-{source.short_hash}"
        request = BuildRequest(
            image_name=name,
            context_dir=definition.folder,
            dockerfile=definition.dockerfile,
            build_args=build_args,
            target=f"{registry.host}/{repository}:{build_tag}",
            labels={
                "org.opencontainers.image.title": name,
                "org.opencontainers.image.description": spec.description,
                SOURCE_HASH_LABEL: source.source_hash,
            },
            push_auth=registry.push_auth(),
            tls_verify=registry.push_tls_verify,
        )
        context.log.info(f"building {name} FROM {base_image}")
        try:
            result = builder.build(request, on_line=context.log.info)
        except BuildError as exc:
            raise dg.Failure(
                description=str(exc),
                metadata={"failing_step": exc.step or "", "log_tail": log_block(exc.log_tail)},
            ) from exc
        size = registry.client().manifest(repository, result.digest).size  # also proves the push landed
        built = BuiltImage(
            image_name=name,
            registry=registry.host,
            repository=repository,
            digest=result.digest,
            build_tag=build_tag,
            source_hash=source.source_hash,
            base_image=base_image,
            base_digest=result.base_digest,
            created=result.created,
            duration_s=round(result.duration_s, 1),
        )
        return dg.Output(
            built,
            data_version=dg.DataVersion(result.digest),
            metadata={
                "image": built.reference,
                "tags": [build_tag],
                "digest": result.digest,
                "size": dg.MetadataValue.int(size),
                "base_image": base_image,
                "base_digest": result.base_digest or "",
                "source_hash": source.source_hash,
                "build_duration_s": dg.MetadataValue.float(built.duration_s),
                "log_tail": log_block(result.log_tail[-LOG_TAIL_LINES:]),
            },
        )

    build_spec = {
        "key": build_key,
        "group_name": group,
        "code_version": code_version,
        "pool": BUILD_POOL,
        "kinds": kinds,
        "description": f"{spec.display_name}: built from its Dockerfile, pushed to the registry by digest.",
    }
    if spec.parent is None:

        @dg.asset(ins={"source": dg.AssetIn(key=source_key)}, **build_spec)
        def build(
            context: dg.AssetExecutionContext, builder: ImageBuilder, registry: Registry, source: ImageSource
        ) -> dg.Output[BuiltImage]:
            return run_build(context, builder, registry, source, None)

    else:

        @dg.asset(
            ins={
                "source": dg.AssetIn(key=source_key),
                "parent": dg.AssetIn(key=asset_key(spec.parent, "published")),
            },
            **build_spec,
        )
        def build(
            context: dg.AssetExecutionContext,
            builder: ImageBuilder,
            registry: Registry,
            source: ImageSource,
            parent: PublishedImage,
        ) -> dg.Output[BuiltImage]:
            return run_build(context, builder, registry, source, parent)

    @dg.asset(
        key=published_key,
        ins={"build": dg.AssetIn(key=build_key)},
        group_name=group,
        kinds=kinds,
        description=f"{spec.display_name}: digest verified in the registry, tagged version and latest.",
    )
    def published(
        context: dg.AssetExecutionContext, registry: Registry, build: BuiltImage
    ) -> dg.Output[PublishedImage]:
        client = registry.client()
        repository = build.repository
        served = client.digest_of(repository, build.digest)
        if served != build.digest:
            raise dg.Failure(
                description=f"registry {registry.url}: {repository}@{build.digest} is not there "
                f"(the registry answered {served or 'not found'}); rebuild {name}",
            )
        tags = [version_tag(build.created, build.source_hash), "latest"]
        for tag in tags:
            client.tag(repository, build.digest, tag)
            context.log.info(f"{repository}:{tag} -> {build.digest}")
        manifest = client.manifest(repository, build.digest)
        metadata: dict[str, object] = {}
        if isinstance(client, HarborClient):
            artifact = client.artifact(registry.project, name, build.digest)
            metadata["harbor_artifact"] = dg.MetadataValue.json(
                {"digest": artifact.digest, "tags": list(artifact.tags), "push_time": artifact.push_time}
            )
        image = PublishedImage(
            image_name=name,
            registry=build.registry,
            repository=repository,
            digest=build.digest,
            version_tag=tags[0],
            tags=tuple(tags),
            size=manifest.size,
            created=build.created,
        )
        return dg.Output(
            image,
            data_version=dg.DataVersion(build.digest),
            metadata={
                "image": image.reference,
                "tags": list(image.tags),
                "size": dg.MetadataValue.int(image.size),
                "size_mb": dg.MetadataValue.float(round(image.size / 1e6, 1)),
                "registry": registry.url,
                **metadata,
            },
        )

    @dg.asset(
        key=entry_key,
        ins={"published": dg.AssetIn(key=published_key)},
        group_name=group,
        kinds={"api"},
        description=f"{spec.display_name}: its item in the image catalog, which the hub reads at spawn time.",
    )
    def catalog_entry(
        context: dg.AssetExecutionContext, catalog: CatalogResource, published: PublishedImage
    ) -> dg.Output[dict]:
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
        item, change = client.ensure(wanted)
        context.log.info(f"{name}: catalog item {change}")
        return dg.Output(
            item.model_dump(mode="json"),
            data_version=dg.DataVersion(published.digest),
            metadata={
                "catalog_item": dg.MetadataValue.url(client.item_url(name)),
                "digest": published.digest,
                "tag": published.version_tag,
                "change": change,
            },
        )

    return [source, build, published, catalog_entry]


def image_assets(images: ImageSet) -> list[dg.AssetsDefinition]:
    return [asset for definition in images for asset in image_chain(images, definition)]
