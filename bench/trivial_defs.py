"""The baseline code location: one trivial asset, no resources. What Dagster costs on its own.

`dagster definitions validate -m bench.trivial_defs` is the baseline of the code location load, and
`dagster asset materialize -m bench.trivial_defs --select trivial` the baseline of a run.
"""

import dagster as dg

TRIVIAL_ASSET = "trivial"
TRIVIAL_STEP = "trivial"


@dg.asset(name=TRIVIAL_ASSET)
def trivial() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"value": 1})


defs = dg.Definitions(assets=[trivial], executor=dg.in_process_executor)
