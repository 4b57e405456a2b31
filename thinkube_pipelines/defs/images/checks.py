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
from thinkube_pipelines.defs.images.keys import SMOKE_CHECK, asset_key, smoke_check_key
from thinkube_pipelines.defs.images.records import BuiltImage, log_block
from thinkube_pipelines.images import ImageDefinition, ImageSet
from thinkube_pipelines.registry.resource import Registry

PROBE = Path(__file__).with_name("smoke_probe.py")
SINGLEUSER_COMMAND = "jupyterhub-singleuser"
GPU_CHECK_COMMAND = "gpu-check"
"""The GPU test script every GPU image ships (run on a GPU node; here only its presence is checked)."""
HISTORY_LOOKBACK = 20


def smoke_commands(definition: ImageDefinition) -> list[str]:
    return [SINGLEUSER_COMMAND] + ([GPU_CHECK_COMMAND] if definition.spec.gpu_required else [])


def smoke_check_spec(definition: ImageDefinition) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        SMOKE_CHECK,
        asset=asset_key(definition.name, "build"),
        blocking=True,
        description=f"Runs the pushed image: {', '.join(smoke_commands(definition))} present and every "
        "requirement imports. Runs once per digest.",
    )


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


def smoke_check(
    context: dg.AssetExecutionContext,
    images: ImageSet,
    definition: ImageDefinition,
    runner: ImageRunner,
    registry: Registry,
    timeout_s: float,
) -> dg.AssetCheckResult:
    """Evaluate the smoke check of `definition`'s latest build."""
    name = definition.name
    build_key = asset_key(name, "build")
    built = BuiltImage.recorded(context.instance, build_key)

    def result(passed: bool, description: str, **metadata) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            asset_key=build_key,
            check_name=SMOKE_CHECK,
            passed=passed,
            description=description,
            metadata={"digest": built.digest, **metadata},
        )

    passed_in = earlier_pass(context.instance, smoke_check_key(name), built.digest)
    if passed_in is not None:
        return result(True, f"{built.digest} already passed in run {passed_in}", passed_in_run=passed_in)
    probe_request = {
        "distributions": [pin.name for pin in images.full_requirements(name)],
        "commands": smoke_commands(definition),
    }
    request = RunRequest(
        image=built.image,
        argv=["python", "-c", PROBE.read_text(), json.dumps(probe_request)],
        timeout_s=timeout_s,
        registry=registry.access(),
    )
    try:
        ran = runner.run(request, on_line=context.log.debug)
    except RunError as exc:
        return result(False, f"{name}: {exc}")
    report = _last_json_line(ran.output)
    if ran.returncode != 0 or report is None:
        tail = ran.output.strip().splitlines()[-20:]
        return result(
            False,
            f"{name}: the smoke probe could not run in the image (exit {ran.returncode})",
            output=log_block(tail),
        )
    failed = report["failed_imports"]
    missing = report["missing_commands"]
    problems = [f"command not found: {c}" for c in missing] + [f"import {m}: {e}" for m, e in failed.items()]
    return result(
        not problems,
        "; ".join(problems) if problems else f"{len(report['imported'])} modules import",
        image=built.image,
        imported=dg.MetadataValue.int(len(report["imported"])),
        failed_imports=dg.MetadataValue.json(failed),
        missing_commands=missing,
    )


def _last_json_line(output: str) -> dict | None:
    for line in reversed(output.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "failed_imports" in value:
            return value
    return None
