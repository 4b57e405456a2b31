"""The blocking smoke check on every build: nothing is published from an image that cannot start Jupyter.

It runs the pushed digest through the `runner` resource (pulled from the registry, never a builder's local
copy), and runs it once per digest: a digest that already passed in an earlier run (the instance records
every check evaluation) passes again without a container.
"""

import json
from pathlib import Path

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from thinkube_pipelines.builders.base import ImageRunner, RunError, RunRequest
from thinkube_pipelines.defs.images.assets import asset_key, log_block
from thinkube_pipelines.defs.images.records import BuiltImage
from thinkube_pipelines.defs.resources import BuildSettings
from thinkube_pipelines.images import ImageDefinition, ImageSet
from thinkube_pipelines.registry.resource import Registry

PROBE = Path(__file__).with_name("smoke_probe.py")
SINGLEUSER_COMMAND = "jupyterhub-singleuser"
GPU_CHECK_COMMAND = "gpu-check"
"""The GPU test script every GPU image ships (run on a GPU node; here only its presence is checked)."""
SMOKE_CHECK = "smoke"
HISTORY_LOOKBACK = 20


def earlier_pass(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, digest: str) -> str | None:
    """The run id of an earlier passed evaluation of `check_key` for `digest`, if any."""
    history = instance.event_log_storage.get_asset_check_execution_history(
        check_key, limit=HISTORY_LOOKBACK, status={AssetCheckExecutionRecordStatus.SUCCEEDED}
    )
    for record in history:
        evaluation = record.event.dagster_event.event_specific_data if record.event else None
        entry = getattr(evaluation, "metadata", {}).get("digest")
        if evaluation is not None and evaluation.passed and getattr(entry, "value", None) == digest:
            return record.run_id
    return None


def smoke_check(images: ImageSet, definition: ImageDefinition) -> dg.AssetChecksDefinition:
    name = definition.name
    build_key = asset_key(name, "build")
    distributions = [pin.name for pin in images.full_requirements(name)]
    commands = [SINGLEUSER_COMMAND] + ([GPU_CHECK_COMMAND] if definition.spec.gpu_required else [])

    @dg.asset_check(
        asset=build_key,
        name=SMOKE_CHECK,
        blocking=True,
        description=f"Runs the pushed image: {', '.join(commands)} present and every requirement imports. "
        "Runs once per digest.",
    )
    def smoke(
        context: dg.AssetCheckExecutionContext,
        runner: ImageRunner,
        registry: Registry,
        build_settings: BuildSettings,
    ) -> dg.AssetCheckResult:
        built = BuiltImage.recorded(context.instance, build_key)
        check_key = dg.AssetCheckKey(build_key, SMOKE_CHECK)
        passed_in = earlier_pass(context.instance, check_key, built.digest)
        if passed_in is not None:
            return dg.AssetCheckResult(
                passed=True,
                description=f"{built.digest} already passed in run {passed_in}",
                metadata={"digest": built.digest, "passed_in_run": passed_in},
            )
        request = RunRequest(
            image=built.image,
            argv=[
                "python",
                "-c",
                PROBE.read_text(),
                json.dumps({"distributions": distributions, "commands": commands}),
            ],
            timeout_s=build_settings.smoke_timeout_s,
            registry=registry.access(),
        )
        try:
            result = runner.run(request, on_line=context.log.debug)
        except RunError as exc:
            return dg.AssetCheckResult(
                passed=False, description=f"{name}: {exc}", metadata={"digest": built.digest}
            )
        report = _last_json_line(result.output)
        if result.returncode != 0 or report is None:
            tail = result.output.strip().splitlines()[-20:]
            return dg.AssetCheckResult(
                passed=False,
                description=f"{name}: the smoke probe could not run in the image (exit {result.returncode})",
                metadata={"digest": built.digest, "output": log_block(tail)},
            )
        failed = report["failed_imports"]
        missing = report["missing_commands"]
        problems = [f"command not found: {c}" for c in missing] + [
            f"import {m}: {e}" for m, e in failed.items()
        ]
        return dg.AssetCheckResult(
            passed=not problems,
            description="; ".join(problems) if problems else f"{len(report['imported'])} modules import",
            metadata={
                "digest": built.digest,
                "image": built.image,
                "imported": dg.MetadataValue.int(len(report["imported"])),
                "failed_imports": dg.MetadataValue.json(failed),
                "missing_commands": missing,
            },
        )

    return smoke


def _last_json_line(output: str) -> dict | None:
    for line in reversed(output.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "failed_imports" in value:
            return value
    return None


def smoke_checks(images: ImageSet) -> list[dg.AssetChecksDefinition]:
    return [smoke_check(images, d) for d in images]
