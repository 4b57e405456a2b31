"""Dagster definitions split by concern: assets, checks, jobs and resources."""
