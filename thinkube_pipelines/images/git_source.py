"""A git remote (a Gitea repository's branch) as a source of image folders.

The observation asks the remote for the branch's current commit (`GitRemote.head`, one `git ls-remote`);
a build then checks out exactly that commit (`GitRemote.checkout`), so what is built is what was observed
even when the branch moved in between. Both use the real `git` binary, so every transport, proxy and CA
setting git knows works here too, and no Python git library is needed.

Credentials: a Gitea access token reaches git only through the environment of the git process
(`http.extraHeader` from `GIT_CONFIG_*`), never through a URL, a command line, an exception message or a
log line. Git never prompts (a prompt would hang a sensor tick): `GIT_TERMINAL_PROMPT=0` and an askpass
program that answers nothing.

Nothing here keeps state between processes: any process can `checkout(commit)` from nothing. An optional
cache folder only saves fetches of commits already fetched (guarded by a file lock).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import posixpath
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

log = logging.getLogger(__name__)

URL_ENV = "THINKUBE_IMAGES_GIT_URL"
BRANCH_ENV = "THINKUBE_IMAGES_GIT_BRANCH"
PATH_ENV = "THINKUBE_IMAGES_GIT_PATH"
USERNAME_ENV = "THINKUBE_IMAGES_GIT_USERNAME"
TOKEN_ENV = "THINKUBE_IMAGES_GIT_TOKEN"

_FIELD_ENV = {
    "url": URL_ENV,
    "branch": BRANCH_ENV,
    "path": PATH_ENV,
    "username": USERNAME_ENV,
    "token": TOKEN_ENV,
}

DEFAULT_HEAD_TIMEOUT_S = 30.0
DEFAULT_CHECKOUT_TIMEOUT_S = 300.0

_SCHEMES = ("http", "https", "git")
_COMMIT = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
# What `git check-ref-format --branch` refuses, checked without a process: control characters, space and
# ~^:?*[\ anywhere, "..", "@{", a leading "-", "/" at either end or doubled, a component starting with
# "." or ending with ".lock", a trailing ".", the name "@".
_BAD_BRANCH = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|^-|^/|/$|//|(?:^|/)\.|\.lock(?:/|$)|\.$|^@$")

# Environment variables of the calling process that must not reach our git processes: tracing
# (GIT_TRACE_CURL prints the Authorization header), and anything that would point git at another repository.
# Everything else (proxies, GIT_SSL_CAINFO and the other TLS settings, HOME) passes on unchanged.
_PASSED_GIT_VARIABLES = frozenset(
    {
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "GIT_SSL_NO_VERIFY",
        "GIT_SSL_CERT",
        "GIT_SSL_KEY",
        "GIT_SSL_VERSION",
        "GIT_SSL_CIPHER_LIST",
        "GIT_HTTP_PROXY_AUTHMETHOD",
        "GIT_HTTP_LOW_SPEED_LIMIT",
        "GIT_HTTP_LOW_SPEED_TIME",
        "GIT_HTTP_USER_AGENT",
        "GIT_EXEC_PATH",
        "GIT_CONFIG_NOSYSTEM",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_SYSTEM",
    }
)


class GitSourceConfigError(ValueError):
    """A git source setting is malformed; the message names the environment variable (never the token)."""


class GitSourceError(RuntimeError):
    """The remote could not be read: the message names the URL (without credentials) and the branch,
    commit or path concerned, and never carries the token."""


class GitSourceSettings(BaseModel):
    """Where the image folders live in git. Build it with `from_env()`, or directly (tests, resources)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="http(s):// or git:// URL of the repository, without credentials")
    branch: str = Field("main", description="the branch whose commits are observed and built")
    path: str = Field(
        "images", description="folder inside the repository that holds the image folders ('.': its root)"
    )
    username: str | None = Field(None, description="login that goes with the token (Gitea: the user name)")
    token: SecretStr | None = Field(None, description="Gitea access token, sent as the Basic password")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip()
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            # Never echo the value: it may carry a password.
            raise ValueError("is not a URL") from None
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                f"must not carry credentials: give them in {USERNAME_ENV} and {TOKEN_ENV} (the URL is "
                "shown in the UI and in logs)"
            )
        if parts.scheme not in _SCHEMES:
            raise ValueError(f"{value!r} is not an http://, https:// or git:// URL")
        if not parts.hostname:
            raise ValueError(f"{value!r} names no host")
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r} must have no query or fragment")
        del port  # parsed only to reject a malformed one
        return value.rstrip("/")

    @field_validator("branch")
    @classmethod
    def _check_branch(cls, value: str) -> str:
        if value.startswith("refs/"):
            raise ValueError(f"{value!r}: give the branch name alone (e.g. 'main'), not a ref")
        if not value or _BAD_BRANCH.search(value):
            raise ValueError(f"{value!r} is not a valid branch name")
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if "\\" in value or value.startswith("/") or "\x00" in value:
            raise ValueError(f"{value!r} must be a relative path inside the repository, with '/' separators")
        parts = [part for part in value.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise ValueError(f"{value!r} must stay inside the repository (no '..')")
        if ".git" in parts:
            raise ValueError(f"{value!r} must not point into .git")
        return "/".join(parts) or "."

    @model_validator(mode="after")
    def _check_credentials(self) -> GitSourceSettings:
        token = self.token.get_secret_value() if self.token is not None else ""
        if token and not self.username:
            raise ValueError(f"{TOKEN_ENV} is set but {USERNAME_ENV} is not: Basic auth needs both")
        if self.username and not token:
            raise ValueError(f"{USERNAME_ENV} is set but {TOKEN_ENV} is not: Basic auth needs both")
        if token and urlsplit(self.url).scheme == "git":
            raise ValueError(f"{TOKEN_ENV} needs an http(s) URL: git:// has no authentication")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GitSourceSettings | None:
        """The settings from the environment (an empty variable counts as unset); None when no URL is set
        (the images come from the local folder only). A bad value raises `GitSourceConfigError` naming
        the variable."""
        env = os.environ if environ is None else environ
        if not env.get(URL_ENV):
            return None
        raw: dict[str, Any] = {field: env[name] for field, name in _FIELD_ENV.items() if env.get(name)}
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise GitSourceConfigError(_describe(exc)) from None

    def describe(self) -> str:
        """`<url>@<branch>`: how messages and the UI name this source."""
        return f"{self.url}@{self.branch}"


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = error["loc"]
        message = re.sub(r"^Value error, ", "", error["msg"])
        if loc:
            lines.append(f"{_FIELD_ENV.get(str(loc[0]), str(loc[0]))}: {message}")
        else:
            lines.append(message)  # a cross-field check: its message names the variables
    return "git image source settings: " + "; ".join(lines)


class GitRemote:
    """One branch of one git repository, read through the `git` binary.

    `head()` is cheap (one ls-remote); `checkout(commit, into)` writes exactly that commit's image folders.
    `cache_dir`: where fetched commits are kept for later checkouts in this or another process (a bare
    repository per URL, under a file lock); None fetches into a temporary repository each time.
    """

    def __init__(self, settings: GitSourceSettings, cache_dir: Path | None = None) -> None:
        self.settings = settings
        self.cache_dir = cache_dir

    def __repr__(self) -> str:
        return f"GitRemote({self.describe()!r})"

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def branch(self) -> str:
        return self.settings.branch

    @property
    def path(self) -> str:
        return self.settings.path

    def describe(self) -> str:
        """`<url>@<branch>` (the URL never carries credentials)."""
        return self.settings.describe()

    # -- the branch head -------------------------------------------------------------------------------

    def head(self, timeout_s: float = DEFAULT_HEAD_TIMEOUT_S) -> str:
        """The branch's current commit sha (one `git ls-remote` of that one ref)."""
        ref = f"refs/heads/{self.branch}"
        done = self._git(
            ["ls-remote", "--refs", self.url, ref],
            cwd=Path("/"),
            timeout_s=timeout_s,
            what=f"reading branch {self.branch!r} of {self.url}",
        )
        for line in done.stdout.decode(errors="replace").splitlines():
            sha, _, name = line.partition("\t")
            if name == ref and _COMMIT.match(sha):
                log.debug("git source %s: head %s", self.describe(), sha)
                return sha
        raise GitSourceError(f"{self.url}: branch {self.branch!r} does not exist")

    # -- one commit's image folders --------------------------------------------------------------------

    def checkout(self, commit: str, into: Path, timeout_s: float = DEFAULT_CHECKOUT_TIMEOUT_S) -> Path:
        """Write the image folders of exactly `commit` into `into` (absent or empty) and return the images
        folder inside it (`into/<path>`).

        Files are the commit's blobs byte for byte (no line-ending conversion, no filters or export
        attributes) with their executable bit, so a folder's digest is the same as a clean local checkout's.
        Submodules are skipped; a symlink that leaves the images folder is refused.
        """
        if not _COMMIT.match(commit):
            raise ValueError(f"checkout: {commit!r} is not a full commit id (40 or 64 lowercase hex digits)")
        into = Path(into)
        if into.exists() and any(into.iterdir()):
            raise ValueError(f"checkout: {into} is not empty")
        with self._repository() as repo:
            self._fetch(repo, commit, timeout_s)
            entries = self._tree(repo, commit, timeout_s)
            blobs = self._blobs(repo, [sha for mode, sha, _ in entries if mode != "120000"], timeout_s)
            links = self._blobs(repo, [sha for mode, sha, _ in entries if mode == "120000"], timeout_s)
        images = into if self.path == "." else into / self.path
        images.mkdir(parents=True, exist_ok=True)
        prefix = "" if self.path == "." else self.path + "/"
        for mode, sha, name in entries:
            relative = name[len(prefix) :]
            target = images / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if mode == "120000":
                link = links[sha].decode()
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(relative), link))
                if posixpath.isabs(link) or resolved == ".." or resolved.startswith("../"):
                    raise GitSourceError(
                        f"{self.url}: commit {commit}: symlink {name} -> {link} leaves {self.path!r}"
                    )
                target.symlink_to(link)
            else:
                target.write_bytes(blobs[sha])
                target.chmod(0o755 if mode == "100755" else 0o644)
        log.debug("git source %s: commit %s written to %s", self.describe(), commit, images)
        return images

    @contextlib.contextmanager
    def _repository(self) -> Iterator[Path]:
        """A bare repository to fetch into: the cache's (locked while in use) or a temporary one."""
        if self.cache_dir is None:
            with tempfile.TemporaryDirectory(prefix="thinkube-images-git-") as scratch:
                repo = Path(scratch) / "repo.git"
                self._init(repo)
                yield repo
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        repo = self.cache_dir / f"{key}.git"
        with (self.cache_dir / f"{key}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (repo / "HEAD").is_file():
                shutil.rmtree(repo, ignore_errors=True)
                self._init(repo)
            yield repo

    def _init(self, repo: Path) -> None:
        self._git(["init", "--quiet", "--bare", str(repo)], timeout_s=30, what=f"creating {repo}")

    def _has_commit(self, repo: Path, commit: str) -> bool:
        done = self._git(
            ["cat-file", "-t", commit], repo=repo, timeout_s=30, what="looking up a commit", check=False
        )
        return done.returncode == 0 and done.stdout.strip() == b"commit"

    def _fetch(self, repo: Path, commit: str, timeout_s: float) -> None:
        """Make `commit` present in `repo`: by its id (shallow), else through the branch (servers that
        refuse unadvertised commits: protocol v0 without uploadpack.allowReachableSHA1InWant)."""
        if self._has_commit(repo, commit):
            return
        what = f"fetching commit {commit} of {self.describe()}"
        done = self._git(
            ["fetch", "--quiet", "--no-tags", "--depth=1", self.url, commit],
            repo=repo,
            timeout_s=timeout_s,
            what=what,
            check=False,
        )
        if done.returncode == 0 and self._has_commit(repo, commit):
            return
        stderr = done.stderr.decode(errors="replace")
        if _refused_access(stderr):
            raise GitSourceError(self._failure(what, stderr))
        log.debug("git source %s: fetching %s by id refused, fetching the branch", self.describe(), commit)
        tip = f"refs/source/{self.branch}"
        refspec = f"+refs/heads/{self.branch}:{tip}"
        self._git(
            ["fetch", "--quiet", "--no-tags", "--depth=1", self.url, refspec],
            repo=repo,
            timeout_s=timeout_s,
            what=what,
        )
        if not self._has_commit(repo, commit):
            shallow = self._git(
                ["rev-parse", "--is-shallow-repository"], repo=repo, timeout_s=30, what=what
            ).stdout.strip()
            deepen = ["--unshallow"] if shallow == b"true" else []
            self._git(
                ["fetch", "--quiet", "--no-tags", *deepen, self.url, refspec],
                repo=repo,
                timeout_s=timeout_s,
                what=what,
            )
        on_branch = self._has_commit(repo, commit) and (
            self._git(
                ["merge-base", "--is-ancestor", commit, tip], repo=repo, timeout_s=30, what=what, check=False
            ).returncode
            == 0
        )
        if not on_branch:
            raise GitSourceError(
                f"{self.url}: commit {commit} is not on branch {self.branch!r}, and fetching it by id "
                f"failed ({_last_line(self._redact(stderr)) or 'no error given'})"
            )

    def _tree(self, repo: Path, commit: str, timeout_s: float) -> list[tuple[str, str, str]]:
        """(mode, blob id, path) of every file under the images path in `commit`; submodules left out."""
        spec = f"{commit}^{{tree}}" if self.path == "." else f"{commit}:{self.path}"
        kind = self._git(["cat-file", "-t", spec], repo=repo, timeout_s=30, what="", check=False)
        if kind.returncode != 0:
            raise GitSourceError(f"{self.url}: commit {commit} has no {self.path!r} folder")
        if kind.stdout.strip() != b"tree":
            raise GitSourceError(f"{self.url}: in commit {commit}, {self.path!r} is not a folder")
        args = ["ls-tree", "-r", "-z", "--full-tree", commit]
        if self.path != ".":
            args += ["--", self.path]
        listing = self._git(args, repo=repo, timeout_s=timeout_s, what=f"listing commit {commit}")
        entries = []
        for record in listing.stdout.split(b"\0"):
            if not record:
                continue
            meta, _, name = record.partition(b"\t")
            mode, kind_name, sha = meta.decode().split(" ")
            if kind_name != "blob":
                log.debug("git source %s: %s is a %s, left out", self.describe(), name, kind_name)
                continue
            path = name.decode()
            if any(part in ("", ".", "..", ".git") for part in path.split("/")):
                raise GitSourceError(f"{self.url}: commit {commit} has an unsafe path {path!r}")
            entries.append((mode, sha, path))
        return entries

    def _blobs(self, repo: Path, shas: Sequence[str], timeout_s: float) -> dict[str, bytes]:
        """The contents of blobs, read in one `git cat-file --batch`."""
        unique = sorted(set(shas))
        if not unique:
            return {}
        done = self._git(
            ["cat-file", "--batch"],
            repo=repo,
            timeout_s=timeout_s,
            what="reading files",
            stdin="".join(f"{sha}\n" for sha in unique).encode(),
        )
        out, offset, blobs = done.stdout, 0, {}
        for sha in unique:
            end = out.index(b"\n", offset)
            header = out[offset:end].decode().split(" ")
            if len(header) != 3 or header[0] != sha:
                raise GitSourceError(f"{self.url}: blob {sha} is missing ({' '.join(header)})")
            size = int(header[2])
            blobs[sha] = out[end + 1 : end + 1 + size]
            offset = end + 1 + size + 1
        return blobs

    # -- running git -----------------------------------------------------------------------------------

    def _secrets(self) -> tuple[str, ...]:
        token = self.settings.token.get_secret_value() if self.settings.token is not None else ""
        if not token:
            return ()
        return (token, _basic(self.settings.username or "", token))

    def _env(self) -> dict[str, str]:
        """The git process's environment: the caller's (proxies, TLS) without tracing or repository
        variables, plus the credentials as an extra HTTP header and no way to prompt."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("GIT_") or name in _PASSED_GIT_VARIABLES
        }
        env.pop("SSH_ASKPASS", None)
        env["GIT_TERMINAL_PROMPT"] = "0"
        env["GIT_ASKPASS"] = shutil.which("true") or "/bin/true"
        config = [
            ("credential.helper", ""),  # reset: no helper of the user's may answer (or store) for us
            ("gc.auto", "0"),  # fetched commits have no ref; nothing may prune them mid-use
            ("maintenance.auto", "false"),
        ]
        token = self.settings.token.get_secret_value() if self.settings.token is not None else ""
        if token:
            header = _basic(self.settings.username or "", token)
            config.append(("http.extraHeader", f"Authorization: Basic {header}"))
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for index, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        return env

    def _redact(self, text: str) -> str:
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return text

    def _failure(self, what: str, stderr: str) -> str:
        """The message of a failed git command: what was attempted, why (in words), git's last lines."""
        reason = _reason(stderr, has_token=bool(self._secrets()))
        lines = [line.strip() for line in self._redact(stderr).splitlines() if line.strip()]
        detail = " | ".join(lines[-3:])
        message = f"{what}: {reason}" if reason else f"{what}: git failed"
        return f"{message} ({detail})" if detail else message

    def _git(
        self,
        args: Sequence[str],
        *,
        timeout_s: float,
        what: str,
        repo: Path | None = None,
        cwd: Path | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run git; on a timeout end it and its helpers (its own process group), never anything else."""
        argv = ["git", *(["--git-dir", str(repo)] if repo is not None else []), *args]
        process = subprocess.Popen(
            argv,
            cwd=cwd if cwd is not None else repo,
            env=self._env(),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(stdin, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise GitSourceError(f"{what}: no answer within {timeout_s:g} s") from None
        done = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
        if check and done.returncode != 0:
            raise GitSourceError(self._failure(what, stderr.decode(errors="replace")))
        return done


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _basic(username: str, token: str) -> str:
    return base64.b64encode(f"{username}:{token}".encode()).decode()


# HTTP statuses as git's curl reports them ("The requested URL returned error: 403"), never a bare number:
# " 401" alone also matches "port 40121".
_AUTH_MARKS = (
    "Authentication failed",
    "could not read Username",
    "could not read Password",
    "returned error: 401",
    "returned error: 403",
)
_NOT_FOUND_MARKS = ("not found", "returned error: 404", "does not appear to be a git repository")
_UNREACHABLE_MARKS = (
    "Failed to connect",
    "Could not resolve host",
    "Connection refused",
    "Connection timed out",
    "unable to connect",
    "SSL certificate problem",
    "Could not resolve",
)


def _refused_access(stderr: str) -> bool:
    """Whether git failed before any git protocol exchange (retrying another way would fail the same)."""
    return any(mark in stderr for mark in (*_AUTH_MARKS, *_NOT_FOUND_MARKS, *_UNREACHABLE_MARKS))


def _reason(stderr: str, *, has_token: bool) -> str:
    if any(mark in stderr for mark in _UNREACHABLE_MARKS):
        return "cannot reach the server"
    if any(mark in stderr for mark in _AUTH_MARKS):
        if has_token:
            return f"the server refused the credentials (check {USERNAME_ENV} and {TOKEN_ENV})"
        return f"the server requires credentials (set {USERNAME_ENV} and {TOKEN_ENV})"
    if any(mark in stderr for mark in _NOT_FOUND_MARKS):
        return "no such repository (or the credentials may not read it)"
    return ""
