"""The image sources, observed: each image folder's content hash is the data version of `<image>/source`.

`<image>/source` is an observable source asset: the pipeline never makes it, it reads it. The sensor
`image_sources_sensor` looks at the source every `THINKUBE_SOURCE_POLL_S` seconds, hashes every image
folder and records an `AssetObservation` for each folder whose hash changed since its last tick (its cursor
holds the hashes it saw). The source is the code location's own images/ folder, or, when
THINKUBE_IMAGES_GIT_URL is set, a branch of a git remote (Gitea): then each tick asks the remote for the
branch's commit (one `git ls-remote`), and only a new commit is checked out and hashed; the observation
records the commit, and the build checks out exactly that commit (`ImageSource.folder_at`), so what is
built is what was observed even when the branch moved in between. (The UI's Observe button observes the
folders the code location loaded: with a git source, the commit it loaded.) Dagster then sees the new
data version, and the build assets' automation condition (automation.py) requests exactly that image's
chain and the chains built FROM it, in one run.

A change is only observed once the whole folder loads: a change that makes a definition invalid (a bad
field, a lock that no longer matches its requirements) fails the tick with the loader's message, which
names the file and the field, and records nothing, so nothing is built; the next tick tries again. A
change to the image graph itself (a folder added or removed, a parent changed) needs the code location
reloaded, and the tick says so instead of building with the graph it loaded.

A change is recorded only when the automation can see it as newer than the image's latest build: not
while a run builds that image, and not between a build's end and the automation sensor's next completed
evaluation (`images_waiting`; see `build_not_yet_evaluated` for why).
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.scheduler.instigation import InstigatorStatus, TickStatus
from pydantic import BaseModel, ValidationError

from thinkube_pipelines.defs.images.automation import AUTOMATION_SENSOR
from thinkube_pipelines.defs.images.keys import asset_key, observed_spec
from thinkube_pipelines.images import ImageSet
from thinkube_pipelines.images.git_source import GitRemote, GitSourceSettings
from thinkube_pipelines.images.loader import reload_changed
from thinkube_pipelines.images.source import folder_content_hash
from thinkube_pipelines.images.spec import IMAGE_YAML, ImageDefinitionError

SOURCE_STAGE = "source"
SENSOR_NAME = "image_sources_sensor"
COMMIT_METADATA = "commit"


class SourceChangeError(Exception):
    """What the source holds now cannot be built with the loaded code location; nothing was recorded."""


class SourceCursor(BaseModel):
    """What the sensor saw on its last tick that recorded something."""

    hashes: dict[str, str] = {}
    """Folder name -> content hash."""
    commit: str | None = None
    """The git commit they were read from (a git source)."""

    @classmethod
    def parse(cls, text: str | None) -> SourceCursor:
        if not text:
            return cls()
        try:
            return cls.model_validate_json(text)
        except ValidationError:
            return cls()  # a cursor of an older shape: look at everything again

    def dump(self) -> str:
        return self.model_dump_json()


@dataclass(frozen=True)
class SourceLook:
    """One look at the source: where, and each image folder's content hash."""

    where: str
    images_dir: Path
    hashes: dict[str, str]
    """Folder name -> content hash."""
    commit: str | None = None


def look_at_folder(images_dir: Path, where: str | None = None, commit: str | None = None) -> SourceLook:
    """Hash every image folder (a folder with an image.yaml) under `images_dir`."""
    hashes = {}
    for folder in sorted(images_dir.iterdir()):
        if folder.is_dir() and not folder.name.startswith(".") and (folder / IMAGE_YAML).is_file():
            hashes[folder.name] = folder_content_hash(folder)
    return SourceLook(where or f"images folder {images_dir}", images_dir, hashes, commit)


class ImageSource:
    """Where the image folders come from: the code location's own folder, or a git remote's branch."""

    def __init__(self, images_dir: Path | None = None, remote: GitRemote | None = None):
        assert (images_dir is None) != (remote is None), "a folder or a git remote"
        self.images_dir = images_dir
        self.remote = remote

    @classmethod
    def from_env(cls, images_dir: Path) -> ImageSource:
        """The git remote when THINKUBE_IMAGES_GIT_URL is set, else the folder `images_dir`."""
        settings = GitSourceSettings.from_env()
        return cls(remote=GitRemote(settings)) if settings else cls(images_dir=images_dir)

    def describe(self) -> str:
        return f"git {self.remote.describe()}" if self.remote else f"images folder {self.images_dir}"

    @contextlib.contextmanager
    def look(self, cursor: SourceCursor) -> Iterator[SourceLook | None]:
        """The source now (None when a git branch is still at the cursor's commit: nothing to hash)."""
        if self.remote is None:
            assert self.images_dir is not None
            yield look_at_folder(self.images_dir)
            return
        commit = self.remote.head()
        if commit == cursor.commit:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="thinkube-source-") as tmp:
            folder = self.remote.checkout(commit, Path(tmp) / "checkout")
            yield look_at_folder(folder, f"git {self.remote.describe()} at {commit[:12]}", commit)

    @contextlib.contextmanager
    def folder_at(self, commit: str) -> Iterator[Path]:
        """The image folders of `commit` of the git remote, in a temporary folder for the block."""
        assert self.remote is not None
        with tempfile.TemporaryDirectory(prefix="thinkube-build-source-") as tmp:
            yield self.remote.checkout(commit, Path(tmp) / "checkout")


def loaded_folder(source: ImageSource) -> Path:
    """The folder the code location loads its image definitions from: the images folder, or a checkout of
    the git branch's current commit (kept for the life of the process: the definitions point into it)."""
    if source.remote is None:
        assert source.images_dir is not None
        return source.images_dir
    checkout = Path(tempfile.mkdtemp(prefix="thinkube-images-"))
    atexit.register(shutil.rmtree, checkout, ignore_errors=True)
    return source.remote.checkout(source.remote.head(), checkout / "checkout")


def changed_images(look: SourceLook, cursor: SourceCursor) -> list[str]:
    return [name for name, digest in look.hashes.items() if cursor.hashes.get(name) != digest]


def check_loadable(look: SourceLook, loaded: ImageSet, changed: list[str], gone: list[str]) -> None:
    """Raise SourceChangeError unless what the source holds now loads, with the loaded code location's
    image graph. Only the changed folders are read again (`reload_changed`): a tick over hundreds of
    folders costs little more than hashing them."""
    known_folders = {d.folder.name for d in loaded}
    added = sorted(set(changed) - known_folders)
    if added or gone:
        _graph_changed(look, added, gone, [])
    try:
        observed = reload_changed(loaded, look.images_dir, changed)
    except ImageDefinitionError as exc:
        raise SourceChangeError(
            f"{look.where}: the change to {', '.join(changed)} makes the image definitions invalid; "
            f"nothing is built until it is fixed:\n{exc}"
        ) from None
    graph = {d.name: d.spec.parent for d in observed}
    known = {d.name: d.spec.parent for d in loaded}
    if graph != known:
        moved = [f"{n} -> {graph[n]}" for n in sorted(set(graph) & set(known)) if graph[n] != known[n]]
        _graph_changed(look, sorted(set(graph) - set(known)), sorted(set(known) - set(graph)), moved)


def _graph_changed(look: SourceLook, added: list[str], removed: list[str], moved: list[str]) -> None:
    what = "; ".join(
        part
        for part in (
            f"new images {', '.join(added)}" if added else "",
            f"images removed: {', '.join(removed)}" if removed else "",
            f"parent changed: {', '.join(moved)}" if moved else "",
        )
        if part
    )
    raise SourceChangeError(
        f"{look.where}: the image graph changed ({what}); reload the code location (Deployment -> "
        "Reload) so that Dagster knows the new graph, then the sensor records the change"
    )


def observation(name: str, content_hash: str, look: SourceLook) -> dg.AssetObservation:
    """The record of one image folder's content, its hash as the data version (and the git commit)."""
    metadata: dict[str, str] = {"content_hash": content_hash, "source": look.where}
    if look.commit:
        metadata[COMMIT_METADATA] = look.commit
    return dg.AssetObservation(
        asset_key=asset_key(name, SOURCE_STAGE), metadata=metadata, tags={DATA_VERSION_TAG: content_hash}
    )


def observed_commit(instance: dg.DagsterInstance, name: str) -> str | None:
    """The git commit of `name`'s latest source observation: what its build must build (None: a folder)."""
    records = instance.fetch_observations(asset_key(name, SOURCE_STAGE), limit=1).records
    if not records or records[0].asset_observation is None:
        return None
    entry = records[0].asset_observation.metadata.get(COMMIT_METADATA)
    return str(entry.value) if entry is not None else None


def source_observations(
    look: SourceLook, cursor: SourceCursor, images: ImageSet, deferred: frozenset[str] = frozenset()
) -> tuple[list[dg.AssetObservation], SourceCursor]:
    """The observations a tick records (the images whose folder's hash changed) and the cursor after.
    The images in `deferred` are not recorded yet: the cursor keeps their old hash, so a later tick
    records them."""
    names = {d.folder.name: d.name for d in images}
    hashes = dict(look.hashes)
    events = []
    waited = False
    for folder in changed_images(look, cursor):
        if folder not in names:
            continue
        if names[folder] in deferred:
            waited = True
            if folder in cursor.hashes:
                hashes[folder] = cursor.hashes[folder]
            else:
                hashes.pop(folder)
            continue
        events.append(observation(names[folder], look.hashes[folder], look))
    # a git source looks at the same commit again while a change of it waits
    return events, SourceCursor(hashes=hashes, commit=cursor.commit if waited else look.commit)


def images_being_built(instance: dg.DagsterInstance) -> frozenset[str]:
    """The images whose build a queued or running run holds. A change recorded while that run builds would
    be taken as handled when the run finishes (Dagster's eager condition resets on the asset's own
    update), so the sensor records such a change once the run has ended."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
            ]
        ),
        limit=100,
    )
    return frozenset(
        key.path[0] for run in runs for key in (run.asset_selection or ()) if key.path[-1] == "build"
    )


def last_automation_evaluation(instance: dg.DagsterInstance, runs_by_default: bool) -> float | None:
    """When the latest completed tick of the automation sensor started, if that sensor runs (None: it is
    stopped, or has never completed a tick, as in a process without Dagster's daemon)."""
    running = {InstigatorStatus.RUNNING}
    if runs_by_default:
        running |= {InstigatorStatus.DECLARED_IN_CODE, InstigatorStatus.AUTOMATICALLY_RUNNING}
    states = [
        state
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        if state.instigator_name == AUTOMATION_SENSOR and state.status in running
    ]
    starts = [
        tick.timestamp
        for state in states
        for tick in instance.get_ticks(
            state.instigator_origin_id,
            state.selector_id,
            limit=1,
            statuses=[TickStatus.SUCCESS, TickStatus.SKIPPED],
        )
    ]
    return max(starts, default=None)


def build_not_yet_evaluated(
    instance: dg.DagsterInstance, names: frozenset[str], evaluated_at: float | None
) -> frozenset[str]:
    """The images of `names` whose latest build the automation sensor has not evaluated yet (it ended after
    the start of the sensor's latest completed tick).

    Dagster's eager condition decides between an asset's own update and a dependency's update seen on the
    same evaluation by their timestamps, but for an unpartitioned asset it reads only materializations
    (AssetGraphView.compute_subsets_by_latest_materialization_timestamp): an observed source's update has
    none, so the asset's own update wins and the change would be taken as handled by the build that ended
    before it. Recorded after the sensor's next tick, the change is the only update that tick sees."""
    if evaluated_at is None:
        return frozenset()
    waiting = set()
    for name in names:
        built = instance.get_latest_materialization_event(asset_key(name, "build"))
        if built is not None and built.timestamp >= evaluated_at:
            waiting.add(name)
    return frozenset(waiting)


def images_waiting(
    instance: dg.DagsterInstance, names: frozenset[str], automation_runs_by_default: bool
) -> frozenset[str]:
    """The images of `names` (changed ones) whose change the sensor does not record yet: being built, or
    built since the automation last evaluated them."""
    if not names:
        return frozenset()
    being_built = images_being_built(instance) & names
    evaluated_at = last_automation_evaluation(instance, automation_runs_by_default)
    return being_built | build_not_yet_evaluated(instance, names - being_built, evaluated_at)


def source_tick(
    source: ImageSource,
    images: ImageSet,
    cursor: SourceCursor,
    waiting: Callable[[frozenset[str]], frozenset[str]] = lambda names: frozenset(),
) -> tuple[list[dg.AssetObservation], SourceCursor | None, str]:
    """One look at the source: the observations to record, the cursor after them (None: keep it) and a
    line saying what was seen; the changes of the images `waiting` picks among the changed ones wait for
    a later tick. SourceChangeError when the change cannot be built (nothing recorded)."""
    with source.look(cursor) as look:
        if look is None:
            return [], None, f"{source.describe()}: still at commit {(cursor.commit or '')[:12]}"
        changed = changed_images(look, cursor)
        gone = sorted(set(cursor.hashes) - set(look.hashes))
        if not changed and not gone:
            after = SourceCursor(hashes=cursor.hashes, commit=look.commit) if look.commit else None
            return [], after, f"no change in the {len(look.hashes)} image folders of {look.where}"
        check_loadable(look, images, changed, gone)
        deferred = waiting(frozenset(d.name for d in images if d.folder.name in changed))
        events, after = source_observations(look, cursor, images, deferred)
        waits = sorted(deferred)
        said = f"{look.where}: changed: {', '.join(changed) or 'none'}"
        if waits:
            said += (
                f"; recorded once their builds have ended and {AUTOMATION_SENSOR} has evaluated them: "
                f"{', '.join(waits)}"
            )
        return events, after, said


def image_sources_sensor(
    images: ImageSet,
    source: ImageSource,
    *,
    interval_s: int,
    default_status: dg.DefaultSensorStatus,
) -> dg.SensorDefinition:
    """The sensor that observes the image folders (see the module's docstring)."""
    runs_by_default = default_status == dg.DefaultSensorStatus.RUNNING

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=interval_s,
        default_status=default_status,
        description=f"Hashes every image folder of the {source.describe()} and records a new data version "
        "for `<image>/source` when its content changed; the build assets' automation condition rebuilds "
        "that image and the images built FROM it. An invalid change fails the tick, naming file and field.",
    )
    def sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        cursor = SourceCursor.parse(context.cursor)
        events, after, said = source_tick(
            source,
            images,
            cursor,
            lambda names: images_waiting(context.instance, names, runs_by_default),
        )
        if not events:
            if after is None:
                return dg.SkipReason(said)
            return dg.SensorResult(skip_reason=dg.SkipReason(said), cursor=after.dump())
        context.log.info(said)
        return dg.SensorResult(asset_events=events, cursor=after.dump() if after else None)

    return sensor


def image_sources(images: ImageSet) -> dg.AssetsDefinition:
    """`<image>/source` of every image: observable source assets (observed by the sensor above, or on
    demand from the UI's Observe button, with the same hashes)."""
    specs = [
        observed_spec(
            d.name,
            SOURCE_STAGE,
            "file",
            f"The files of images/{d.folder.name}/: their content hash is the data version.",
        )
        for d in images
    ]

    @dg.multi_observable_source_asset(specs=specs, name="image_sources", can_subset=True)
    def observe(context) -> Iterator[dg.ObserveResult]:  # no annotation: Dagster checks it at runtime
        for key in sorted(context.selected_asset_keys, key=lambda k: k.path):
            folder = images[key.path[0]].folder
            where = f"images folder {folder.parent}"
            content_hash = folder_content_hash(folder)
            yield dg.ObserveResult(
                asset_key=key,
                data_version=dg.DataVersion(content_hash),
                metadata={"content_hash": content_hash, "source": where},
            )

    return observe
