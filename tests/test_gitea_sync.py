"""gitea-sync (shipped in jupyter-base) against real git remotes on loopback.

- `remote`: `git daemon` (anonymous git://), for cloning, pulling and refusing bad input;
- `private_remote`: git's own `git http-backend` behind a small HTTP server that, like Gitea, answers 401
  with a Basic challenge unless the request carries the right access token as its password. There the
  token must reach git through the script's credential helper and appear nowhere: not in stdout or
  stderr, not in .git/config or the remote URL, not in any file (another credential helper included).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fixtures.git_server import basic_credentials, refuse_login, run_http_backend
from tests.fixtures.network import free_port
from tests.fixtures.processes import stop_process

SCRIPT = Path(__file__).resolve().parent.parent / "images" / "jupyter-base" / "gitea-sync"
USER = "alice"
REPO = "analysis"


@dataclass(frozen=True)
class GitRemote:
    url: str  # what GITEA_URL holds
    base: Path  # --base-path of the daemon: <base>/<user>/<repo>.git
    env: dict[str, str]  # HOME and git identity, isolated from the developer's own config


def _git(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"git {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"git daemon exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"git daemon did not listen on 127.0.0.1:{port} within {timeout} s")


def _seeded_remote(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A bare repository <base>/alice/analysis.git with one commit; returns (base, git environment)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Test Author",
        "GIT_AUTHOR_EMAIL": "author@example.org",
        "GIT_COMMITTER_NAME": "Test Author",
        "GIT_COMMITTER_EMAIL": "author@example.org",
    }
    base = tmp_path / "srv"
    bare = base / USER / f"{REPO}.git"
    bare.parent.mkdir(parents=True)
    _git(env, "init", "--bare", "--initial-branch=main", str(bare))

    seed = tmp_path / "seed"
    _git(env, "init", "--initial-branch=main", str(seed))
    (seed / "README.md").write_text("# analysis\n")
    _git(env, "add", "README.md", cwd=seed)
    _git(env, "commit", "-m", "first", cwd=seed)
    _git(env, "push", str(bare), "main", cwd=seed)
    return base, env


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[GitRemote]:
    base, env = _seeded_remote(tmp_path)
    port = free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={base}",
            "--listen=127.0.0.1",
            f"--port={port}",
            "--informative-errors",
            str(base),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, daemon)
        yield GitRemote(url=f"git://127.0.0.1:{port}", base=base, env=env)
    finally:
        stop_process(daemon)


@dataclass
class PrivateRemote:
    """A password-protected HTTP git remote; `logins` lists the Basic-auth logins it accepted."""

    url: str  # http://127.0.0.1:PORT, without credentials
    base: Path
    env: dict[str, str]
    token: str = field(repr=False)
    logins: list[str] = field(default_factory=list)
    refused: int = 0  # requests answered 401


def _git_http_server(remote: PrivateRemote) -> ThreadingHTTPServer:
    """`git http-backend` as a CGI program, behind Basic auth that takes `remote.token` as the password."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _login(self) -> str | None:
            credentials = basic_credentials(self)
            if credentials is None:
                return None
            login, password = credentials
            return login if secrets.compare_digest(password, remote.token) else None

        def _serve(self) -> None:
            login = self._login()
            if login is None:
                remote.refused += 1
                refuse_login(self)
                return
            remote.logins.append(login)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            run_http_backend(
                self,
                project_root=remote.base,
                body=body,
                login=login,
                protocol=self.headers.get("Git-Protocol", ""),
                env={"PATH": remote.env["PATH"]},
            ).send(self)

        do_GET = _serve
        do_POST = _serve

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="git-http", daemon=True).start()
    return server


@pytest.fixture
def private_remote(tmp_path: Path) -> Iterator[PrivateRemote]:
    base, env = _seeded_remote(tmp_path)
    remote = PrivateRemote(url="", base=base, env=env, token=secrets.token_hex(20))
    server = _git_http_server(remote)
    remote.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield remote
    finally:
        server.shutdown()
        server.server_close()


def _sync(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _sync_env(remote: GitRemote, notebooks: Path, **extra: str) -> dict[str, str]:
    env = dict(remote.env, GITEA_URL=remote.url, GITEA_USER=USER, NOTEBOOKS_DIR=str(notebooks))
    env.update(extra)
    return env


def _push_new_commit(remote: GitRemote, tmp_path: Path, name: str, text: str) -> None:
    work = tmp_path / f"pusher-{name}"
    _git(remote.env, "clone", str(remote.base / USER / f"{REPO}.git"), str(work))
    (work / name).write_text(text)
    _git(remote.env, "add", name, cwd=work)
    _git(remote.env, "commit", "-m", f"add {name}", cwd=work)
    _git(remote.env, "push", "origin", "main", cwd=work)


def test_script_is_executable_bash_with_strict_mode():
    text = SCRIPT.read_text()
    assert os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not executable"
    assert text.startswith("#!/usr/bin/env bash\n") or text.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in text


def test_help_prints_usage(tmp_path: Path):
    for flag in ("-h", "--help"):
        done = _sync({"PATH": os.environ["PATH"], "HOME": str(tmp_path)}, flag)
        assert done.returncode == 0, done.stderr
        assert "Usage: gitea-sync <repo-name>" in done.stdout
        assert "GITEA_URL" in done.stdout


def test_clones_then_pulls_new_commits(remote: GitRemote, tmp_path: Path):
    notebooks = tmp_path / "notebooks"
    env = _sync_env(remote, notebooks)

    first = _sync(env, REPO)
    assert first.returncode == 0, first.stderr
    checkout = notebooks / REPO
    assert (checkout / "README.md").read_text() == "# analysis\n"
    assert (checkout / ".git").is_dir()
    origin = _git(remote.env, "remote", "get-url", "origin", cwd=checkout).strip()
    assert origin == f"{remote.url}/{USER}/{REPO}.git"

    _push_new_commit(remote, tmp_path, "results.txt", "42\n")
    assert not (checkout / "results.txt").exists()

    second = _sync(env, REPO)
    assert second.returncode == 0, second.stderr
    assert (checkout / "results.txt").read_text() == "42\n"
    assert "pulling" in second.stdout


def test_defaults_owner_to_jupyterhub_user_and_dir_to_home_notebooks(remote: GitRemote, tmp_path: Path):
    env = dict(remote.env, GITEA_URL=remote.url + "/", JUPYTERHUB_USER=USER)
    done = _sync(env, f"{REPO}.git")
    assert done.returncode == 0, done.stderr
    assert (Path(remote.env["HOME"]) / "notebooks" / REPO / "README.md").is_file()


def test_diverged_checkout_is_left_alone_with_a_clear_message(remote: GitRemote, tmp_path: Path):
    notebooks = tmp_path / "notebooks"
    env = _sync_env(remote, notebooks)
    assert _sync(env, REPO).returncode == 0
    checkout = notebooks / REPO
    (checkout / "local.txt").write_text("mine\n")
    _git(remote.env, "add", "local.txt", cwd=checkout)
    _git(remote.env, "commit", "-m", "local work", cwd=checkout)
    local_head = _git(remote.env, "rev-parse", "HEAD", cwd=checkout)
    _push_new_commit(remote, tmp_path, "theirs.txt", "theirs\n")

    done = _sync(env, REPO)
    assert done.returncode != 0
    assert "fast-forward" in done.stderr
    assert "diverged" in done.stderr
    assert _git(remote.env, "rev-parse", "HEAD", cwd=checkout) == local_head
    assert not (checkout / "theirs.txt").exists()


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc", "-x", "--upload-pack=touch pwned", "", "a/b", "..", ".hidden", "a..b", "x y"],
)
def test_bad_names_are_refused_and_create_nothing(remote: GitRemote, tmp_path: Path, name: str):
    notebooks = tmp_path / "notebooks"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = _sync_env(remote, notebooks)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    done = _sync(env, name, cwd=workdir)

    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Usage: gitea-sync <repo-name>" in done.stderr
    assert done.stdout == ""
    assert not notebooks.exists()
    assert not (workdir / "pwned").exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("args", [[], ["a", "b"]])
def test_wrong_argument_count_is_a_usage_error(tmp_path: Path, args: list[str]):
    done = _sync({"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GITEA_URL": "git://127.0.0.1:1"}, *args)
    assert done.returncode == 2
    assert "Usage: gitea-sync <repo-name>" in done.stderr


def test_missing_gitea_url_is_named(tmp_path: Path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GITEA_USER": USER}
    done = _sync(env, REPO)
    assert done.returncode != 0
    assert "GITEA_URL" in done.stderr
    assert not (tmp_path / "notebooks").exists()


def test_missing_owner_names_both_variables(tmp_path: Path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GITEA_URL": "git://127.0.0.1:1"}
    done = _sync(env, REPO)
    assert done.returncode != 0
    assert "GITEA_USER" in done.stderr
    assert "JUPYTERHUB_USER" in done.stderr


def test_unknown_repository_fails_with_gits_message(remote: GitRemote, tmp_path: Path):
    notebooks = tmp_path / "notebooks"
    done = _sync(_sync_env(remote, notebooks), "does-not-exist")
    assert done.returncode != 0
    assert "fatal:" in done.stderr
    assert "does-not-exist" in done.stderr
    assert not (notebooks / "does-not-exist").exists()


def test_existing_folder_that_is_not_a_checkout_is_refused(remote: GitRemote, tmp_path: Path):
    notebooks = tmp_path / "notebooks"
    (notebooks / REPO).mkdir(parents=True)
    (notebooks / REPO / "draft.ipynb").write_text("{}")
    done = _sync(_sync_env(remote, notebooks), REPO)
    assert done.returncode != 0
    assert "not a git checkout" in done.stderr
    assert sorted(p.name for p in (notebooks / REPO).iterdir()) == ["draft.ipynb"]


# -- private repositories: the token goes through git's credential mechanism only -------------------------


def _files_holding(secret: str, root: Path) -> list[Path]:
    """Every file under `root` whose bytes contain `secret`."""
    return [path for path in root.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]


def _assert_token_hidden(token: str, done: subprocess.CompletedProcess[str], tmp_path: Path) -> None:
    assert token not in done.stdout, done.stdout
    assert token not in done.stderr, done.stderr
    assert _files_holding(token, tmp_path) == []


def _private_env(remote: PrivateRemote, notebooks: Path, **extra: str) -> dict[str, str]:
    env = dict(remote.env, GITEA_URL=remote.url, GITEA_USER=USER, NOTEBOOKS_DIR=str(notebooks))
    env.update(extra)
    return env


def _with_token_in_url(remote: PrivateRemote, login: str, token: str) -> str:
    return remote.url.replace("http://", f"http://{login}:{token}@")


@pytest.mark.parametrize("given_in", ["GITEA_URL", "GITEA_TOKEN"])
def test_a_token_clones_and_pulls_a_private_repository_without_leaving_a_trace(
    private_remote: PrivateRemote, tmp_path: Path, given_in: str
) -> None:
    notebooks = tmp_path / "notebooks"
    token = private_remote.token
    if given_in == "GITEA_URL":
        env = _private_env(
            private_remote, notebooks, GITEA_URL=_with_token_in_url(private_remote, "bob", token)
        )
    else:
        env = _private_env(private_remote, notebooks, GITEA_TOKEN=token)
    # The user keeps every credential git approves: the token must not land there either.
    _git(private_remote.env, "config", "--global", "credential.helper", "store")

    first = _sync(env, REPO)

    assert first.returncode == 0, first.stderr
    checkout = notebooks / REPO
    assert (checkout / "README.md").read_text() == "# analysis\n"
    # The remote refused the anonymous try, then took the token with the login given (or the owner).
    assert private_remote.refused >= 1
    assert set(private_remote.logins) == {"bob" if given_in == "GITEA_URL" else USER}
    origin = _git(private_remote.env, "remote", "get-url", "origin", cwd=checkout).strip()
    assert origin == f"{private_remote.url}/{USER}/{REPO}.git"
    assert f"{private_remote.url}/{USER}/{REPO}.git" in first.stdout
    _assert_token_hidden(token, first, tmp_path)
    assert not (Path(private_remote.env["HOME"]) / ".git-credentials").exists()

    _push_new_commit(
        GitRemote(private_remote.url, private_remote.base, private_remote.env), tmp_path, "r.txt", "7\n"
    )
    second = _sync(env, REPO)

    assert second.returncode == 0, second.stderr
    assert (checkout / "r.txt").read_text() == "7\n"
    _assert_token_hidden(token, second, tmp_path)


def test_a_refused_token_fails_clearly_and_stays_hidden(
    private_remote: PrivateRemote, tmp_path: Path
) -> None:
    notebooks = tmp_path / "notebooks"
    wrong = secrets.token_hex(20)
    env = _private_env(private_remote, notebooks, GITEA_URL=_with_token_in_url(private_remote, USER, wrong))

    done = _sync(env, REPO)

    assert done.returncode != 0
    assert private_remote.logins == []  # never let in
    assert "Authentication failed" in done.stderr
    assert f"could not clone {private_remote.url}/{USER}/{REPO}.git" in done.stderr
    assert "check GITEA_TOKEN" in done.stderr
    _assert_token_hidden(wrong, done, tmp_path)
    assert not (notebooks / REPO).exists()


def test_no_token_for_a_private_repository_names_gitea_token(
    private_remote: PrivateRemote, tmp_path: Path
) -> None:
    notebooks = tmp_path / "notebooks"
    # No terminal to prompt on: git must fail instead of waiting for a password.
    env = _private_env(private_remote, notebooks, GIT_TERMINAL_PROMPT="0")

    done = _sync(env, REPO)

    assert done.returncode != 0
    assert private_remote.logins == [] and private_remote.refused >= 1
    assert "a private repository needs GITEA_TOKEN" in done.stderr
    assert not (notebooks / REPO).exists()


def test_a_token_left_in_an_old_checkouts_url_is_removed(
    private_remote: PrivateRemote, tmp_path: Path
) -> None:
    """Checkouts cloned by earlier versions (token inside the remote URL) are cleaned on the next sync."""
    notebooks = tmp_path / "notebooks"
    token = private_remote.token
    checkout = notebooks / REPO
    old_url = f"{_with_token_in_url(private_remote, USER, token)}/{USER}/{REPO}.git"
    _git(private_remote.env, "clone", old_url, str(checkout))
    assert _files_holding(token, tmp_path) == [checkout / ".git" / "config"]
    logins_before = len(private_remote.logins)
    _push_new_commit(
        GitRemote(private_remote.url, private_remote.base, private_remote.env), tmp_path, "n.txt", "1\n"
    )

    done = _sync(_private_env(private_remote, notebooks), REPO)

    assert done.returncode == 0, done.stderr
    assert (checkout / "n.txt").read_text() == "1\n"  # the old token still served this one pull
    assert len(private_remote.logins) > logins_before
    assert "removed the credentials stored in the origin URL" in done.stdout
    origin = _git(private_remote.env, "remote", "get-url", "origin", cwd=checkout).strip()
    assert origin == f"{private_remote.url}/{USER}/{REPO}.git"
    _assert_token_hidden(token, done, tmp_path)
