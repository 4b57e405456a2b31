"""`gpu-check` (images/jupyter-ml-gpu/gpu-check), the GPU test every GPU image ships, on a machine without
a GPU: it fails, exit status 1, with a message that says why and what to look at.

CI has no GPU and no PyTorch (a CUDA build of it is gigabytes). So the script runs twice: with this
interpreter, which has no torch, and with a stand-in `torch` package that answers what a real CUDA build of
PyTorch answers on a machine without a GPU (`torch.cuda.is_available()` is False). The run on a real GPU is
in the closing note of issue 8, when a device machine was lent.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU_CHECK = REPO / "images" / "jupyter-ml-gpu" / "gpu-check"

TORCH_WITHOUT_GPU = '''\
"""What torch 2.4.1+cu121 answers on a machine whose driver shows no GPU."""
__version__ = "2.4.1+cu121"


class version:
    cuda = "12.1"


class cuda:
    @staticmethod
    def is_available():
        return False

    @staticmethod
    def device_count():
        return 0
'''


def run_gpu_check(*pythonpath: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(map(str, pythonpath))}
    return subprocess.run(
        [sys.executable, str(GPU_CHECK)], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_without_pytorch_it_fails_naming_pytorch():
    ran = run_gpu_check()
    assert ran.returncode == 1
    assert ran.stderr.startswith("gpu-check: FAIL: PyTorch is not installed in this environment")
    assert "gpu-check: OK" not in ran.stdout


def test_without_a_gpu_it_fails_naming_the_gpu_limit_and_the_device_plugin(tmp_path):
    package = tmp_path / "torch"
    package.mkdir()
    (package / "__init__.py").write_text(TORCH_WITHOUT_GPU)
    ran = run_gpu_check(tmp_path)
    assert ran.returncode == 1
    assert ran.stdout == "torch 2.4.1+cu121, built for CUDA 12.1\n"
    [message] = ran.stderr.splitlines()
    assert message.startswith(
        "gpu-check: FAIL: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False)."
    )
    assert "nvidia.com/gpu" in message and "NVIDIA device plugin" in message
