"""`gpu-check` (the GPU test every GPU image ships, images/jupyter-ml-gpu/gpu-check) on a machine without a
GPU: it fails, exit status 1, with a message that says why and what to look at.

It runs twice: with this interpreter, which has no PyTorch, and in a virtual environment with a real
PyTorch (the CPU build 2.13.0, which these machines keep on disk for pip; `torch.cuda.is_available()` is
False there, as it is for a CUDA build on a node without a GPU). Its run on a real GPU (an H200) is
recorded in docs/gpu-check-on-a-gpu.md.
"""

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.fixtures.buildah import base_cache_dir

REPO = Path(__file__).resolve().parents[1]
GPU_CHECK = REPO / "images" / "jupyter-ml-gpu" / "gpu-check"
TORCH = "torch==2.13.0"
"""The CPU build pip finds on this kind of machine without downloading gigabytes of CUDA libraries."""


@pytest.fixture(scope="session")
def torch_python() -> Path:
    """A venv with the CPU build of PyTorch, kept in the tests' cache between sessions (about 1 GB, a minute
    to make)."""
    folder = base_cache_dir() / "torch-cpu-venv"
    python = folder / "bin" / "python"
    marker = folder / "installed"
    if not marker.is_file() or marker.read_text() != TORCH:
        venv.create(folder, with_pip=True, clear=True)
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", TORCH],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if installed.returncode != 0:
            pytest.fail(
                f"pip install {TORCH} into {folder} failed:\n{installed.stderr[-2000:]}", pytrace=False
            )
        marker.write_text(TORCH)
    return python


def run_gpu_check(python: Path | str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [str(python), str(GPU_CHECK)], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_without_pytorch_it_fails_naming_pytorch():
    ran = run_gpu_check(sys.executable)
    assert ran.returncode == 1
    assert ran.stderr.startswith("gpu-check: FAIL: PyTorch is not installed in this environment")
    assert "gpu-check: OK" not in ran.stdout


def test_without_a_gpu_it_fails_naming_the_gpu_limit_and_the_device_plugin(torch_python):
    ran = run_gpu_check(torch_python)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert ran.stdout.startswith("torch 2.13.0+cpu, built for CUDA None\n")
    assert "gpu-check: OK" not in ran.stdout
    [message] = [line for line in ran.stderr.splitlines() if line.startswith("gpu-check:")]
    assert message.startswith(
        "gpu-check: FAIL: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False)."
    )
    assert "nvidia.com/gpu" in message and "NVIDIA device plugin" in message
