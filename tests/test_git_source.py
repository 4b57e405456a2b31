"""The git remote as an image source, against a real git server on loopback (smart HTTP, Basic auth).

What an operator would notice: the observed head is the branch's commit; a build gets exactly the observed
commit's folders (not the branch's newer tip), with executable bits, and the same digest as the folder on
disk; every failure names the URL and the branch, commit or path, and the access token appears nowhere
(not in a message, a log line or any process's command line).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.git_server import GitRepo, GitServer
from tests.fixtures.network import free_port
from thinkube_pipelines.builders.base import BuildContext
from thinkube_pipelines.images.git_source import (
    BRANCH_ENV,
    PATH_ENV,
    TOKEN_ENV,
    URL_ENV,
    USERNAME_ENV,
    GitRemote,
    GitSourceConfigError,
    GitSourceError,
    GitSourceSettings,
)
from thinkube_pipelines.images.loader import load_image_definitions
from thinkube_pipelines.images.source import folder_digest

REPO_IMAGES = Path(__file__).resolve().parent.parent / "images"

FIRST = {
    "images/tk-a/image.yaml": "name: tk-a\n",
    "images/tk-a/Dockerfile": "FROM scratch\n# first\n",
    "images/tk-a/entrypoint": "#!/bin/sh\necho first\n",
    "README.md": "# images\n",
}


def _settings(server: GitServer, repo: GitRepo, **overrides: str) -> GitSourceSettings:
    fields = {"url": repo.url, "username": server.username, "token": server.token, **overrides}
    return GitSourceSettings.model_validate(fields)


def _remote(server: GitServer, repo: GitRepo, **overrides: str) -> GitRemote:
    return GitRemote(_settings(server, repo, **overrides))


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def _assert_secret_free(server: GitServer, text: str) -> None:
    assert server.token not in text
    assert server.token[:12] not in text


# -- settings ---------------------------------------------------------------------------------------------


def test_settings_from_env_defaults_and_unset():
    assert GitSourceSettings.from_env({}) is None
    assert GitSourceSettings.from_env({URL_ENV: ""}) is None
    settings = GitSourceSettings.from_env({URL_ENV: "https://git.example.org/thinkube/images.git/"})
    assert settings is not None
    assert (settings.url, settings.branch, settings.path) == (
        "https://git.example.org/thinkube/images.git",
        "main",
        "images",
    )
    assert settings.token is None
    assert settings.describe() == "https://git.example.org/thinkube/images.git@main"
    full = GitSourceSettings.from_env(
        {
            URL_ENV: "http://gitea.local:3000/ops/images.git",
            BRANCH_ENV: "release/2024",
            PATH_ENV: "./jupyter/images/",
            USERNAME_ENV: "ops",
            TOKEN_ENV: "s3cret-token",
        }
    )
    assert full is not None
    assert (full.branch, full.path, full.username) == ("release/2024", "jupyter/images", "ops")
    assert "s3cret-token" not in repr(full)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({URL_ENV: "ftp://example.org/x.git"}, URL_ENV),
        ({URL_ENV: "not a url"}, URL_ENV),
        ({URL_ENV: "https://example.org/x.git", BRANCH_ENV: "bad..branch"}, BRANCH_ENV),
        ({URL_ENV: "https://example.org/x.git", BRANCH_ENV: "refs/heads/main"}, BRANCH_ENV),
        ({URL_ENV: "https://example.org/x.git", PATH_ENV: "../outside"}, PATH_ENV),
        ({URL_ENV: "https://example.org/x.git", PATH_ENV: "/abs"}, PATH_ENV),
        ({URL_ENV: "https://example.org/x.git", TOKEN_ENV: "tok-123"}, USERNAME_ENV),
        ({URL_ENV: "https://example.org/x.git", USERNAME_ENV: "ops"}, TOKEN_ENV),
        ({URL_ENV: "git://example.org/x.git", USERNAME_ENV: "ops", TOKEN_ENV: "tok-123"}, TOKEN_ENV),
    ],
)
def test_bad_settings_name_the_variable(environ: dict[str, str], variable: str):
    with pytest.raises(GitSourceConfigError) as caught:
        GitSourceSettings.from_env(environ)
    assert variable in str(caught.value)
    assert "tok-123" not in str(caught.value)


def test_credentials_in_the_url_are_refused_without_echoing_them():
    with pytest.raises(GitSourceConfigError) as caught:
        GitSourceSettings.from_env({URL_ENV: "https://ops:tok-in-url@example.org/x.git"})
    message = str(caught.value)
    assert URL_ENV in message and TOKEN_ENV in message
    assert "tok-in-url" not in message


# -- head ------------------------------------------------------------------------------------------------


def test_head_is_the_branch_tip_with_one_ls_remote(git_server: GitServer):
    repo = git_server.create_repo()
    repo.commit(FIRST, "first")
    second = repo.commit({"images/tk-a/Dockerfile": "FROM scratch\n# second\n"}, "second")
    other = repo.commit({"images/tk-a/Dockerfile": "FROM scratch\n# other\n"}, "on dev", branch="dev")
    before = len(git_server.requests_for(repo))

    assert _remote(git_server, repo).head() == second
    assert _remote(git_server, repo, branch="dev").head() == other

    asked = git_server.requests_for(repo)[before:]
    # one ls-remote each: one ref advertisement (+ the protocol v2 ls-refs command), nothing fetched
    assert [r.service for r in asked if r.service == "info/refs"] == ["info/refs", "info/refs"]
    assert len(asked) <= 4
    assert all(r.login == git_server.username and r.status == 200 for r in asked)


# -- checkout --------------------------------------------------------------------------------------------


def test_checkout_of_an_older_commit_gives_that_commits_files(git_server: GitServer, tmp_path: Path):
    repo = git_server.create_repo()
    first = repo.commit(FIRST, "first", executable=["images/tk-a/entrypoint"])
    repo.commit(
        {"images/tk-a/Dockerfile": "FROM scratch\n# second\n", "images/tk-b/image.yaml": "name: tk-b\n"},
        "second",
    )
    remote = _remote(git_server, repo)
    assert remote.head() != first

    images = remote.checkout(first, tmp_path / "out")

    assert images == tmp_path / "out" / "images"
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file()) == [
        "tk-a/Dockerfile",
        "tk-a/entrypoint",
        "tk-a/image.yaml",
    ]
    assert (images / "tk-a" / "Dockerfile").read_text() == "FROM scratch\n# first\n"
    assert os.access(images / "tk-a" / "entrypoint", os.X_OK)
    assert not os.access(images / "tk-a" / "Dockerfile", os.X_OK)
    assert not (tmp_path / "out" / "README.md").exists()  # only the images path


def test_checked_out_folders_have_the_local_folders_digests(git_server: GitServer, tmp_path: Path):
    """The code location's own images/ pushed to the remote and checked out: each image's content hash
    (its build context's digest, executable bits included) is the same as on local disk."""
    local = tmp_path / "local"
    shutil.copytree(REPO_IMAGES, local, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    repo = git_server.create_repo()
    repo.copy_tree(local, "deploy/images")
    commit = repo.commit({}, "the images")

    images = GitRemote(_settings(git_server, repo, path="deploy/images")).checkout(commit, tmp_path / "out")

    folders = sorted(p.name for p in local.iterdir() if p.is_dir())
    assert folders and sorted(p.name for p in images.iterdir()) == folders
    executables = [p for p in local.rglob("*") if p.is_file() and os.access(p, os.X_OK)]
    assert executables, "the images folder has executable scripts (their bit is part of the digest)"
    for name in folders:
        assert BuildContext.from_folder(images / name).digest == BuildContext.from_folder(local / name).digest
    checked = {d.name: folder_digest(d) for d in load_image_definitions(images, check_locks=False)}
    on_disk = {d.name: folder_digest(d) for d in load_image_definitions(local, check_locks=False)}
    assert checked == on_disk


def test_checkout_of_the_whole_repository_root(git_server: GitServer, tmp_path: Path):
    repo = git_server.create_repo()
    commit = repo.commit(FIRST, "first")
    images = _remote(git_server, repo, path=".").checkout(commit, tmp_path / "out")
    assert images == tmp_path / "out"
    assert (images / "README.md").read_text() == "# images\n"
    assert (images / "images" / "tk-a" / "image.yaml").is_file()


def test_checkout_in_a_fresh_process_from_the_environment(git_server: GitServer, tmp_path: Path):
    """Another process (a run worker) with nothing but the settings checks out the observed commit."""
    repo = git_server.create_repo()
    observed = repo.commit(FIRST, "first", executable=["images/tk-a/entrypoint"])
    repo.commit({"images/tk-a/Dockerfile": "FROM scratch\n# newer\n"}, "newer")
    script = (
        "import json, os, sys; from pathlib import Path\n"
        "from thinkube_pipelines.images.git_source import GitRemote, GitSourceSettings\n"
        "remote = GitRemote(GitSourceSettings.from_env(), cache_dir=Path(sys.argv[2]))\n"
        "images = remote.checkout(sys.argv[1], Path(sys.argv[3]))\n"
        "print(json.dumps({'images': str(images), 'x': os.access(images / 'tk-a/entrypoint', os.X_OK)}))\n"
    )
    env = dict(
        os.environ,
        **{URL_ENV: repo.url, USERNAME_ENV: git_server.username, TOKEN_ENV: git_server.token},
    )
    done = subprocess.run(
        [sys.executable, "-c", script, observed, str(tmp_path / "fresh-cache"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"images": str(tmp_path / "out" / "images"), "x": True}
    assert (tmp_path / "out/images/tk-a/Dockerfile").read_text() == "FROM scratch\n# first\n"


def test_a_cached_commit_is_not_fetched_again(git_server: GitServer, tmp_path: Path):
    repo = git_server.create_repo()
    commit = repo.commit(FIRST, "first")
    remote = GitRemote(_settings(git_server, repo), cache_dir=tmp_path / "cache")
    remote.checkout(commit, tmp_path / "one")
    fetched = len(git_server.requests_for(repo, "git-upload-pack"))
    assert fetched >= 1

    second = GitRemote(_settings(git_server, repo), cache_dir=tmp_path / "cache").checkout(
        commit, tmp_path / "two"
    )

    assert len(git_server.requests_for(repo, "git-upload-pack")) == fetched
    assert (second / "tk-a" / "Dockerfile").read_text() == FIRST["images/tk-a/Dockerfile"]


def test_a_server_that_refuses_commits_by_id_serves_them_through_the_branch(
    git_server: GitServer, tmp_path: Path
):
    repo = git_server.create_repo(protocol_v2=False)
    first = repo.commit(FIRST, "first", executable=["images/tk-a/entrypoint"])
    second = repo.commit({"images/tk-a/Dockerfile": "FROM scratch\n# second\n"}, "second")
    repo.commit({"images/tk-a/Dockerfile": "FROM scratch\n# third\n"}, "third")
    remote = _remote(git_server, repo)
    by_id = subprocess.run(
        ["git", "fetch", "--depth=1", repo.url, first],
        cwd=repo.work,
        env=git_server.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert by_id.returncode != 0 and "does not allow request for unadvertised object" in by_id.stderr

    older = remote.checkout(first, tmp_path / "first")
    assert (older / "tk-a" / "Dockerfile").read_text() == "FROM scratch\n# first\n"
    assert os.access(older / "tk-a" / "entrypoint", os.X_OK)
    assert (remote.checkout(second, tmp_path / "second") / "tk-a/Dockerfile").read_text().endswith("second\n")

    # a commit the branch no longer has (history rewritten) cannot be fetched from such a server
    repo.reset_hard(first)
    repo.push(force=True)
    with pytest.raises(GitSourceError) as caught:
        remote.checkout(second, tmp_path / "gone")
    message = str(caught.value)
    assert second in message and "'main'" in message and repo.url in message
    _assert_secret_free(git_server, message)


# -- failures: named, and free of the token ----------------------------------------------------------------


def test_unknown_branch(git_server: GitServer, logs: pytest.LogCaptureFixture):
    repo = git_server.create_repo()
    repo.commit(FIRST)
    with pytest.raises(GitSourceError) as caught:
        _remote(git_server, repo, branch="no-such-branch").head()
    message = str(caught.value)
    assert repo.url in message and "no-such-branch" in message
    _assert_secret_free(git_server, message + logs.text)


def test_wrong_token(git_server: GitServer, logs: pytest.LogCaptureFixture, tmp_path: Path):
    repo = git_server.create_repo()
    commit = repo.commit(FIRST)
    wrong = "wrong-" + git_server.token[:10]
    remote = _remote(git_server, repo, token=wrong)
    with pytest.raises(GitSourceError) as caught:
        remote.head(timeout_s=20)
    message = str(caught.value)
    assert repo.url in message and "'main'" in message
    assert TOKEN_ENV in message  # says which setting to fix
    assert wrong not in message and wrong not in logs.text
    _assert_secret_free(git_server, message + logs.text)
    assert git_server.requests_for(repo)[-1].status == 401

    with pytest.raises(GitSourceError) as fetching:
        remote.checkout(commit, tmp_path / "out", timeout_s=20)
    assert commit in str(fetching.value) and TOKEN_ENV in str(fetching.value)
    assert wrong not in str(fetching.value)


def test_no_credentials_for_a_private_repository(git_server: GitServer):
    repo = git_server.create_repo()
    repo.commit(FIRST)
    started = time.monotonic()
    with pytest.raises(GitSourceError) as caught:
        GitRemote(GitSourceSettings(url=repo.url)).head(timeout_s=20)
    assert time.monotonic() - started < 10  # git did not wait on a prompt
    assert repo.url in str(caught.value) and USERNAME_ENV in str(caught.value)


def test_unreachable_server(logs: pytest.LogCaptureFixture, tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}/ops/images.git"
    remote = GitRemote(GitSourceSettings(url=url, username="ops", token="tok-unreachable-123"))
    with pytest.raises(GitSourceError) as caught:
        remote.head(timeout_s=20)
    message = str(caught.value)
    assert url in message and "'main'" in message and "cannot reach" in message
    assert "tok-unreachable-123" not in message + logs.text


def test_the_reason_of_a_failure_is_read_from_gits_words_not_from_port_numbers():
    """A port like 40121 holds " 401": the reason comes from git's own phrases."""
    from thinkube_pipelines.images.git_source import _reason

    refused = (
        "fatal: unable to access 'http://127.0.0.1:40121/x.git/': Failed to connect to 127.0.0.1 port 40121"
    )
    assert _reason(refused, has_token=True) == "cannot reach the server"
    denied = "fatal: unable to access 'http://127.0.0.1:4031/x.git/': The requested URL returned error: 403"
    assert "refused the credentials" in _reason(denied, has_token=True)


def test_a_server_that_never_answers_times_out(logs: pytest.LogCaptureFixture):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/ops/images.git"
        remote = GitRemote(GitSourceSettings(url=url, branch="dev", username="ops", token="tok-silent-123"))
        started = time.monotonic()
        with pytest.raises(GitSourceError) as caught:
            remote.head(timeout_s=1.5)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert url in message and "'dev'" in message and "1.5 s" in message
    assert "tok-silent-123" not in message + logs.text


def test_missing_images_path(git_server: GitServer, tmp_path: Path, logs: pytest.LogCaptureFixture):
    repo = git_server.create_repo()
    commit = repo.commit(FIRST)
    with pytest.raises(GitSourceError) as caught:
        _remote(git_server, repo, path="jupyter/images").checkout(commit, tmp_path / "out")
    message = str(caught.value)
    assert repo.url in message and commit in message and "jupyter/images" in message
    _assert_secret_free(git_server, message + logs.text)

    with pytest.raises(GitSourceError) as not_a_folder:
        _remote(git_server, repo, path="README.md").checkout(commit, tmp_path / "out2")
    assert "README.md" in str(not_a_folder.value) and "not a folder" in str(not_a_folder.value)


def test_unknown_commit(git_server: GitServer, tmp_path: Path):
    repo = git_server.create_repo()
    repo.commit(FIRST)
    missing = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(GitSourceError) as caught:
        _remote(git_server, repo).checkout(missing, tmp_path / "out")
    assert missing in str(caught.value) and repo.url in str(caught.value)


def test_the_token_is_on_no_command_line(
    git_server: GitServer, tmp_path: Path, logs: pytest.LogCaptureFixture
):
    """While the server answers, the command lines of every process of ours (git, git-remote-http, the
    http-backend) are read from /proc: the token is in none of them, nor its Basic form."""
    repo = git_server.create_repo(protocol_v2=False)  # the fallback path spawns the most git processes
    first = repo.commit(FIRST, "first")
    repo.commit({"images/tk-a/Dockerfile": "FROM scratch\n# second\n"}, "second")
    remote = _remote(git_server, repo)
    git_server.cmdlines.clear()
    git_server.record_cmdlines = True
    try:
        remote.head()
        remote.checkout(first, tmp_path / "out")
    finally:
        git_server.record_cmdlines = False
    seen = [" ".join(argv) for argv in git_server.cmdlines]
    assert any("remote-http" in line and repo.url in line for line in seen), "the git client was seen"
    basic = __import__("base64").b64encode(f"{git_server.username}:{git_server.token}".encode()).decode()
    for line in seen:
        assert git_server.token not in line and basic not in line
    assert git_server.token not in logs.text and basic not in logs.text


def test_checkout_refuses_a_non_empty_folder_and_a_short_commit(git_server: GitServer, tmp_path: Path):
    repo = git_server.create_repo()
    commit = repo.commit(FIRST)
    remote = _remote(git_server, repo)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "stale").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        remote.checkout(commit, tmp_path / "busy")
    with pytest.raises(ValueError, match="full commit id"):
        remote.checkout(commit[:12], tmp_path / "short")
