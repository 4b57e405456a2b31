"""The blocking checks on every build: nothing is published from an image that cannot start Jupyter, nor
from a GPU image that cannot compute on a GPU.

- `smoke`, every image: the pushed digest runs the smoke probe (the commands present, every requirement
  imports), without a GPU.
- `gpu`, images with gpu_required: the pushed digest runs `gpu-check` (PyTorch sees a CUDA device and a
  matrix product on it matches the CPU's) with exactly one GPU; in the cluster a Job asking for
  `nvidia.com/gpu: 1` and tolerating the GPU taint.

Both run the pushed digest through the `runner` resource (pulled from the registry, never a builder's local
copy), once per digest: a digest that already passed in an earlier run (the instance records every check
evaluation) passes again without a container.
"""

import json
from pathlib import Path

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from thinkube_pipelines.builders.base import ImageRunner, RunError, RunRequest
from thinkube_pipelines.defs.images.keys import GPU_CHECK, SMOKE_CHECK, asset_key
from thinkube_pipelines.defs.images.records import BuiltImage, log_block
from thinkube_pipelines.defs.resources import BuildSettings
from thinkube_pipelines.images import ImageDefinition, ImageSet
from thinkube_pipelines.registry.resource import Registry
from thinkube_pipelines.settings import GPU_TEST_ENV

PROBE = Path(__file__).with_name("smoke_probe.py")
SINGLEUSER_COMMAND = "jupyterhub-singleuser"
GPU_CHECK_COMMAND = "gpu-check"
"""The GPU test script every GPU image ships (the root GPU image installs it, its children inherit it)."""
GPU_TEST_GPUS = 1
HISTORY_LOOKBACK = 20
OUTPUT_TAIL_LINES = 20


def smoke_commands(definition: ImageDefinition) -> list[str]:
    return [SINGLEUSER_COMMAND] + ([GPU_CHECK_COMMAND] if definition.spec.gpu_required else [])


def check_specs(
    definition: ImageDefinition, automation_condition: dg.AutomationCondition | None = None
) -> list[dg.AssetCheckSpec]:
    """The blocking checks of `definition`'s build: smoke, and the GPU test for a gpu_required image; they
    carry the build's automation condition, so an automated build is checked like a manual one."""
    build = asset_key(definition.name, "build")
    specs = [
        dg.AssetCheckSpec(
            SMOKE_CHECK,
            asset=build,
            blocking=True,
            automation_condition=automation_condition,
            description=f"Runs the pushed image: {', '.join(smoke_commands(definition))} present and every "
            "requirement imports. Runs once per digest.",
        )
    ]
    if definition.spec.gpu_required:
        specs.append(
            dg.AssetCheckSpec(
                GPU_CHECK,
                asset=build,
                blocking=True,
                automation_condition=automation_condition,
                description=f"Runs `{GPU_CHECK_COMMAND}` in the pushed image with exactly {GPU_TEST_GPUS} "
                "GPU: PyTorch sees a CUDA device and a matrix product on it matches the CPU's. Runs once per "
                f"digest; {GPU_TEST_ENV}=false (no GPU at hand) reports it as not run, without blocking.",
            )
        )
    return specs


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


class Evaluation:
    """The result of one check of the latest build of one image, with that build's digest in its metadata
    (which `earlier_pass` matches)."""

    def __init__(self, context: dg.AssetExecutionContext, definition: ImageDefinition, check_name: str):
        self.name = definition.name
        self.check_name = check_name
        self.build_key = asset_key(definition.name, "build")
        self.built = BuiltImage.recorded(context.instance, self.build_key)
        self.passed_in = earlier_pass(
            context.instance, dg.AssetCheckKey(self.build_key, check_name), self.built.digest
        )

    def result(
        self,
        passed: bool,
        description: str,
        severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
        **metadata,
    ) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            asset_key=self.build_key,
            check_name=self.check_name,
            passed=passed,
            severity=severity,
            description=description,
            metadata={"digest": self.built.digest, **metadata},
        )

    def already_passed(self) -> dg.AssetCheckResult:
        return self.result(
            True, f"{self.built.digest} already passed in run {self.passed_in}", passed_in_run=self.passed_in
        )


def smoke_check(
    context: dg.AssetExecutionContext,
    images: ImageSet,
    definition: ImageDefinition,
    runner: ImageRunner,
    registry: Registry,
    settings: BuildSettings,
) -> dg.AssetCheckResult:
    """Evaluate the smoke check of `definition`'s latest build."""
    evaluation = Evaluation(context, definition, SMOKE_CHECK)
    if evaluation.passed_in is not None:
        return evaluation.already_passed()
    name = definition.name
    probe_request = {
        "distributions": [pin.name for pin in images.full_requirements(name)],
        "commands": smoke_commands(definition),
    }
    request = RunRequest(
        image=evaluation.built.image,
        argv=["python", "-c", PROBE.read_text(), json.dumps(probe_request)],
        timeout_s=settings.smoke_timeout_s,
        registry=registry.access(),
    )
    try:
        ran = runner.run(request, on_line=context.log.debug)
    except RunError as exc:
        return evaluation.result(False, f"{name}: {exc}")
    report = _last_json_line(ran.output)
    if ran.returncode != 0 or report is None:
        return evaluation.result(
            False,
            f"{name}: the smoke probe could not run in the image (exit {ran.returncode})",
            output=log_block(_tail(ran.output)),
        )
    failed = report["failed_imports"]
    missing = report["missing_commands"]
    problems = [f"command not found: {c}" for c in missing] + [f"import {m}: {e}" for m, e in failed.items()]
    return evaluation.result(
        not problems,
        "; ".join(problems) if problems else f"{len(report['imported'])} modules import",
        image=evaluation.built.image,
        imported=dg.MetadataValue.int(len(report["imported"])),
        failed_imports=dg.MetadataValue.json(failed),
        missing_commands=missing,
    )


def gpu_check(
    context: dg.AssetExecutionContext,
    images: ImageSet,
    definition: ImageDefinition,
    runner: ImageRunner,
    registry: Registry,
    settings: BuildSettings,
) -> dg.AssetCheckResult:
    """Evaluate the GPU test of `definition`'s latest build: `gpu-check` with one GPU, its verdict its exit
    status, its device lines and output tail in the metadata."""
    evaluation = Evaluation(context, definition, GPU_CHECK)
    if evaluation.passed_in is not None:
        return evaluation.already_passed()
    name = definition.name
    if not settings.gpu_test:
        return evaluation.result(
            False,
            f"{name}: the GPU test was not run ({GPU_TEST_ENV}=false): this digest is published without "
            "proof that it computes on a GPU",
            severity=dg.AssetCheckSeverity.WARN,
        )
    request = RunRequest(
        image=evaluation.built.image,
        argv=[GPU_CHECK_COMMAND],
        gpus=GPU_TEST_GPUS,
        timeout_s=settings.gpu_test_timeout_s,
        registry=registry.access(),
    )
    try:
        ran = runner.run(request, on_line=context.log.info)
    except RunError as exc:
        return evaluation.result(
            False,
            f"{name}: the GPU test could not run: {exc} (where no GPU is at hand, {GPU_TEST_ENV}=false "
            "publishes without it)",
        )
    lines = _tail(ran.output)
    devices = [line.strip() for line in ran.output.splitlines() if "compute capability" in line]
    verdict = next((line for line in reversed(lines) if line.startswith("gpu-check:")), None)
    if ran.returncode == 0:
        description = f"{name}: {verdict or 'gpu-check passed'} on {', '.join(devices) or 'the GPU'}"
    else:
        said = verdict or (lines[-1] if lines else "no output")
        description = f"{name}: the GPU test failed (exit {ran.returncode}): {said}"
    return evaluation.result(
        ran.returncode == 0,
        description,
        image=evaluation.built.image,
        devices=devices,
        output=log_block(lines),
    )


def _tail(output: str) -> list[str]:
    return output.strip().splitlines()[-OUTPUT_TAIL_LINES:]


def _last_json_line(output: str) -> dict | None:
    for line in reversed(output.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "failed_imports" in value:
            return value
    return None
