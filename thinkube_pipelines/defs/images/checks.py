"""The blocking smoke check on every build: nothing is published from an image that cannot start Jupyter."""

import json
from pathlib import Path

import dagster as dg

from thinkube_pipelines.builders.base import ImageBuilder
from thinkube_pipelines.defs.images.assets import asset_key, log_block
from thinkube_pipelines.defs.images.outputs import BuiltImage
from thinkube_pipelines.images import ImageDefinition, ImageSet

PROBE = Path(__file__).with_name("smoke_probe.py")
SINGLEUSER_COMMAND = "jupyterhub-singleuser"
GPU_CHECK_COMMAND = "gpu-check"
"""The GPU test script every GPU image ships (run on a GPU node; here only its presence is checked)."""


def smoke_check(images: ImageSet, definition: ImageDefinition) -> dg.AssetChecksDefinition:
    name = definition.name
    distributions = [pin.name for pin in images.full_requirements(name)]
    commands = [SINGLEUSER_COMMAND] + ([GPU_CHECK_COMMAND] if definition.spec.gpu_required else [])

    @dg.asset_check(
        asset=asset_key(name, "build"),
        name="smoke",
        blocking=True,
        description=f"Runs the built image: {', '.join(commands)} present and every requirement imports.",
    )
    def smoke(
        context: dg.AssetCheckExecutionContext, builder: ImageBuilder, build: BuiltImage
    ) -> dg.AssetCheckResult:
        request = json.dumps({"distributions": distributions, "commands": commands})
        result = builder.run(
            build.build_reference, ["python", "-c", PROBE.read_text(), request], on_line=context.log.debug
        )
        report = _last_json_line(result.output)
        if result.returncode != 0 or report is None:
            tail = result.output.strip().splitlines()[-20:]
            return dg.AssetCheckResult(
                passed=False,
                description=f"{name}: the smoke probe could not run in the image (exit {result.returncode})",
                metadata={"output": log_block(tail)},
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
                "image": build.reference,
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
