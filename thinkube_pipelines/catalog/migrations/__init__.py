"""Alembic migrations of the catalog database (run through thinkube_pipelines.catalog.schema)."""
