"""Dagster definitions split by concern: assets, checks, jobs, sensors, schedules and resources."""

import warnings

import dagster as dg

# Two beta APIs are used on purpose (`multi_observable_source_asset` for the observed sources and bases,
# `AssetSelection.tag(..., include_sources=True)` in the automation condition): their warnings, printed
# at every load of the code location, say nothing an operator can act on.
for api in ("Function `multi_observable_source_asset`", "Parameter `include_sources`"):
    warnings.filterwarnings("ignore", message=api, category=dg.BetaWarning)
