"""The example notebook shipped in jupyter-base, run end to end against a real SeaweedFS."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.fixtures.seaweedfs import SeaweedFS

NOTEBOOK = Path(__file__).resolve().parent.parent / "images" / "jupyter-base" / "seaweedfs-examples.ipynb"
SAMPLE_NAME = "seaweedfs-example.csv"
# Variables of the developer's own shell that could point the notebook somewhere else.
_SCRUBBED = ("AWS_", "SEAWEEDFS_", "SCRATCH_DIR", "JUPYTERHUB_")


def _kernel_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env.update(HOME=str(home), AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    env.update(extra)
    return env


def _run_notebook(env: dict[str, str], cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=120, startup_timeout=60, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute(env=env)
    return nb


def test_notebook_is_stored_without_outputs_or_literal_endpoints():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [], f"cell {cell.get('id')} has stored outputs"
        assert cell.execution_count is None, f"cell {cell.get('id')} has an execution count"
        assert "http://" not in cell.source and "https://" not in cell.source, (
            f"cell {cell.get('id')} hard-codes a URL; the endpoint must come from the environment"
        )
        assert "aws_access_key_id=" not in cell.source and "aws_secret_access_key=" not in cell.source, (
            f"cell {cell.get('id')} passes credentials literally"
        )


def test_notebook_round_trips_a_file_between_scratch_and_seaweedfs(seaweedfs: SeaweedFS, tmp_path: Path):
    home = tmp_path / "home"
    scratch = tmp_path / "scratch"
    home.mkdir()
    bucket = f"nb-example-{secrets.token_hex(4)}"
    client = seaweedfs.s3_client()
    bucket_names = {b["Name"] for b in client.list_buckets()["Buckets"]}
    assert bucket not in bucket_names

    env = _kernel_env(
        home,
        SEAWEEDFS_S3_ENDPOINT=seaweedfs.endpoint,
        AWS_ACCESS_KEY_ID=seaweedfs.access_key,
        AWS_SECRET_ACCESS_KEY=seaweedfs.secret_key,
        SEAWEEDFS_BUCKET=bucket,
        SCRATCH_DIR=str(scratch),
        JUPYTERHUB_USER="alice",
    )
    _run_notebook(env, cwd=home)

    written = scratch / SAMPLE_NAME
    assert written.is_file(), f"the notebook wrote no {SAMPLE_NAME} in SCRATCH_DIR ({scratch})"
    expected = written.read_bytes()
    assert expected, "the sample file is empty"
    assert (scratch / "seaweedfs-example.downloaded.csv").read_bytes() == expected

    # Independently of the notebook: the bucket was created and holds exactly the bytes written in scratch.
    assert bucket in {b["Name"] for b in client.list_buckets()["Buckets"]}
    key = f"examples/alice/{SAMPLE_NAME}"
    listed = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert listed == [key]
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == expected

    # A second run finds the bucket already there and replaces the object with a fresh sample.
    _run_notebook(env, cwd=home)
    second = written.read_bytes()
    assert second != expected, "each run writes a fresh sample (it carries a random run id)"
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == second


def test_notebook_fails_naming_the_endpoint_variable_when_it_is_unset(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    env = _kernel_env(
        home,
        AWS_ACCESS_KEY_ID="unused",
        AWS_SECRET_ACCESS_KEY="unused",
        SCRATCH_DIR=str(tmp_path / "scratch"),
    )
    with pytest.raises(CellExecutionError) as excinfo:
        _run_notebook(env, cwd=home)
    assert "SEAWEEDFS_S3_ENDPOINT" in str(excinfo.value)
    assert not (tmp_path / "scratch").exists(), "nothing should be written before the endpoint is known"
