"""A small, typed client of the OCI distribution API (`/v2/`), as Harbor and the CNCF registry serve it.

Authentication follows the registry's challenge: each request goes out anonymously (or with what an earlier
challenge taught us), and a 401 answer's `WWW-Authenticate` says what to do next:

- `Basic realm=...`: retry with the configured username and password (the CNCF registry with htpasswd);
- `Bearer realm=...,service=...,scope=...`: ask the token service at `realm` for a token for that scope,
  with Basic credentials (the docker token protocol, as Harbor and distribution implement it), and retry
  with `Authorization: Bearer`. Tokens are cached per scope until shortly before they expire.

Every failure is a `RegistryError` whose message names the registry URL and what was attempted. Passwords
and tokens never appear in messages, reprs or logs.

`HarborClient` adds the few calls of Harbor's management API (`/api/v2.0`) the pipeline needs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urljoin, urlsplit

import requests

from thinkube_pipelines.oci import (
    image_reference,
    is_digest,
    validate_digest,
    validate_reference,
    validate_repository,
    validate_tag,
)
from thinkube_pipelines.registry.reference import (
    DEFAULT_TIMEOUT_S,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    sha256_digest,
)

_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
# A token is used again only while it has this many seconds of life left.
_TOKEN_MARGIN_S = 10.0

Flavor = Literal["distribution", "harbor"]


class RegistryError(RuntimeError):
    """The registry could not be reached, refused a request, or answered something unexpected.

    `registry` is the registry's URL, `action` what was attempted, `status` the HTTP status if there was one.
    """

    def __init__(self, message: str, *, registry: str, action: str, status: int | None = None):
        super().__init__(message)
        self.registry = registry
        self.action = action
        self.status = status


class RegistryUnreachable(RegistryError):
    """No answer: connection refused, DNS failure, timeout or a TLS handshake failure."""


class RegistryUnauthorized(RegistryError):
    """The registry (or its token service) did not accept the credentials, or none were configured."""


class RegistryForbidden(RegistryError):
    """The registry knows who we are and refuses the request (HTTP 403)."""


class RegistryNotFound(RegistryError):
    """The repository, manifest, blob or (Harbor) project does not exist."""


class DigestMismatch(RegistryError):
    """The registry served bytes whose sha256 is not the digest it announced or that was asked for."""


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor inside a manifest: what a config, layer or child manifest is."""

    media_type: str
    digest: str
    size: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Descriptor:
        return cls(
            media_type=str(data.get("mediaType", "")), digest=str(data["digest"]), size=int(data["size"])
        )


@dataclass(frozen=True)
class Manifest:
    """A manifest as the registry served it, with its digest verified against its bytes.

    For an image manifest, `config` and `layers` describe the image; for an index (multi-platform),
    `manifests` lists the child manifests and `config` is None.
    """

    digest: str
    media_type: str
    raw: bytes = field(repr=False)
    json: dict[str, Any] = field(repr=False)
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...] = ()

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES

    @property
    def config_digest(self) -> str | None:
        return self.config.digest if self.config else None

    @property
    def layer_digests(self) -> tuple[str, ...]:
        return tuple(layer.digest for layer in self.layers)

    @property
    def size(self) -> int:
        """Bytes the image takes in the registry: config plus layers (0 for an index)."""
        return (self.config.size if self.config else 0) + sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class ImageFacts:
    """An image as the registry serves it: the record every builder's result is read from."""

    digest: str
    size: int
    """Bytes in the registry: config plus layers."""
    created: datetime | None
    labels: dict[str, str]
    """The image config's labels (the OCI annotations we set at build time are labels here)."""
    annotations: dict[str, str]
    """The manifest's annotations, where the builder wrote any."""


def _parse_timestamp(raw: object) -> datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime (registries and builders print nanoseconds)."""
    if not isinstance(raw, str):
        return None
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", raw)
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    text = whole + f".{(fraction or '0')[:6]:0<6}" + ("+00:00" if zone == "Z" else zone)
    return datetime.fromisoformat(text).astimezone(UTC)


@dataclass(frozen=True)
class Challenge:
    """A parsed `WWW-Authenticate` header."""

    scheme: str
    params: dict[str, str]

    @classmethod
    def parse(cls, header: str | None) -> Challenge | None:
        if not header or not header.strip():
            return None
        scheme, _, rest = header.strip().partition(" ")
        params = {
            match.group(1).lower(): (
                re.sub(r"\\(.)", r"\1", match.group(2)) if match.group(2) is not None else match.group(3)
            )
            for match in _CHALLENGE_PARAM.finditer(rest)
        }
        return cls(scheme=scheme.lower(), params=params)


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _scope_key(scope: str) -> str:
    """A scope with its actions sorted: registries name them in any order ("push,pull" = "pull,push")."""
    keys = []
    for item in scope.split():
        resource, _, actions = item.rpartition(":")
        keys.append(f"{resource}:{','.join(sorted(actions.split(',')))}" if resource else item)
    return " ".join(sorted(keys))


def _connection_failure(exc: requests.RequestException, verify: bool | str = True) -> str:
    """A short reason such as "timed out" or "[Errno 111] Connection refused" (requests' text is long)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return _tls_failure(exc, verify)
    if isinstance(exc, requests.Timeout):
        return f"timed out ({type(exc).__name__})"
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
    return errno.group(0) if errno else f"connection failed ({type(exc).__name__})"


def _tls_failure(exc: requests.exceptions.SSLError, verify: bool | str) -> str:
    """Why the TLS handshake failed, and what to configure; `verify` is the client's `verify_tls`."""
    text = str(exc)
    reason = re.search(r"certificate verify failed: ([^(\"']+)", text)
    if reason:
        why = reason.group(1).strip().rstrip(".")
        if "mismatch" in why:
            return (
                f"its TLS certificate is not valid for this host ({why}); use the host name the "
                "certificate was issued for"
            )
        against = f"the CA bundle {verify}" if isinstance(verify, str) else "this machine's trusted CAs"
        return (
            f"its TLS certificate is not trusted ({why}; checked against {against}); configure the CA "
            "that signed it: the registry's ca_bundle, a PEM file"
        )
    if "WRONG_VERSION_NUMBER" in text:
        return "TLS handshake failed (wrong version number): no HTTPS there, is the URL's scheme http?"
    return f"TLS handshake failed ({type(exc).__name__})"


def _error_codes(response: requests.Response) -> str:
    """The registry's `errors` (code: message), never the raw body, which we do not control."""
    try:
        errors = response.json().get("errors") or []
    except (ValueError, AttributeError):
        return ""
    parts = []
    for error in errors[:3]:
        if isinstance(error, dict):
            code, message = str(error.get("code", "")), str(error.get("message", ""))
            parts.append(f"{code}: {message}"[:200] if message else code[:100])
    return "; ".join(part for part in parts if part)


class RegistryClient:
    """The OCI distribution API of the registry at `url` (e.g. "http://127.0.0.1:5000").

    `username`/`password` are optional (anonymous registries and public Harbor projects need none).
    `verify_tls` is True, False, or the path of a CA bundle. `timeout_s` bounds each HTTP request.
    """

    flavor: Flavor = "distribution"

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        *,
        verify_tls: bool | str = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        session: requests.Session | None = None,
    ):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"registry URL must be http(s)://host[:port], got {url!r}")
        if parts.username or parts.password:
            raise ValueError("registry URL must not carry credentials: pass username and password instead")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"registry URL must be http(s)://host[:port] without a path, got {url!r}")
        if password and not username:
            raise ValueError("a registry password was given without a username")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.username = username or None
        self._password = password or ""
        self.verify_tls = verify_tls
        self.timeout_s = timeout_s
        self._session = session or requests.Session()
        self._lock = threading.Lock()
        self._use_basic = False
        # token scope (as the registry's challenge named it) -> (Authorization header, monotonic expiry)
        self._tokens: dict[str, tuple[str, float]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, username={self.username!r})"

    @property
    def host(self) -> str:
        """host[:port], as image references name the registry."""
        return urlsplit(self.url).netloc

    # -- the distribution API ---------------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the registry answers `/v2/` and accepts our credentials (or anonymous access)."""
        action = "check the /v2/ API"
        try:
            self._request("GET", "/v2/", action=action, scope="")
        except RegistryNotFound as exc:
            raise RegistryError(
                f"registry {self.url}: {action}: no OCI registry API there (HTTP 404 on /v2/); check the "
                "URL (or a proxy between us answered)",
                registry=self.url,
                action=action,
                status=404,
            ) from exc

    def manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest `repository:reference` (a tag or a digest), digest verified against its bytes."""
        action = f"get manifest {image_reference(repository, reference)}"
        response = self._manifest_request("GET", repository, reference, action)
        return self._parse_manifest(response, reference, action)

    def digest_of(self, repository: str, reference: str) -> str | None:
        """The digest `repository:reference` resolves to (by HEAD); None when there is no such manifest."""
        action = f"resolve {image_reference(repository, reference)}"
        response = self._manifest_request("HEAD", repository, reference, action, allow=(404,))
        if response.status_code == 404:
            return None
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            # A registry that does not say the digest on HEAD: read the manifest and hash it.
            return self.manifest(repository, reference).digest
        return digest

    def _manifest_request(
        self, method: str, repository: str, reference: str, action: str, allow: tuple[int, ...] = ()
    ) -> requests.Response:
        """GET or HEAD a manifest, accepting every manifest format we can read."""
        validate_repository(repository)
        validate_reference(reference)
        return self._request(
            method,
            f"/v2/{repository}/manifests/{reference}",
            action=action,
            scope=f"repository:{repository}:pull",
            headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
            allow=allow,
        )

    def tag(self, repository: str, digest: str, tag: str) -> str:
        """Point `tag` at the existing manifest `digest`, pushing no layer; returns the digest.

        The manifest's exact bytes are read by digest and PUT again under the tag with the same
        Content-Type (so the digest cannot change); then the registry must serve `digest` for `tag`.
        """
        validate_repository(repository)
        validate_digest(digest)
        validate_tag(tag)
        manifest = self.manifest(repository, digest)
        action = f"tag {repository}@{digest} as {tag}"
        self.put_manifest(repository, tag, manifest.raw, manifest.media_type, action=action)
        served = self.digest_of(repository, tag)
        if served != digest:
            raise RegistryError(
                f"registry {self.url}: {action}: after the PUT the tag resolves to {served}, not {digest}",
                registry=self.url,
                action=action,
            )
        return digest

    def blob_exists(self, repository: str, digest: str) -> bool:
        validate_repository(repository)
        validate_digest(digest)
        response = self._request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            action=f"check blob {digest} in {repository}",
            scope=f"repository:{repository}:pull",
            allow=(404,),
            allow_redirects=True,
        )
        return response.status_code != 404

    def tags(self, repository: str) -> list[str]:
        """Every tag of `repository` (following the registry's pagination)."""
        validate_repository(repository)
        action = f"list tags of {repository}"
        path: str | None = f"/v2/{repository}/tags/list"
        found: list[str] = []
        while path:
            response = self._request(
                "GET", path, action=action, scope=f"repository:{repository}:pull", allow_redirects=False
            )
            try:
                found.extend(response.json().get("tags") or [])
            except (ValueError, AttributeError) as exc:
                raise RegistryError(
                    f"registry {self.url}: {action}: the answer is not the tag list JSON",
                    registry=self.url,
                    action=action,
                    status=response.status_code,
                ) from exc
            link = _LINK_NEXT.search(response.headers.get("Link", ""))
            path = None
            if link:
                path = self._resolve(link.group(1))[1]
        return found

    def blob(self, repository: str, digest: str) -> bytes:
        """The bytes of blob `digest` (a config or layer), verified against the digest."""
        validate_repository(repository)
        validate_digest(digest)
        action = f"get blob {digest} of {repository}"
        response = self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            action=action,
            scope=f"repository:{repository}:pull",
            allow_redirects=True,
        )
        if digest.startswith("sha256:") and sha256_digest(response.content) != digest:
            raise DigestMismatch(
                f"registry {self.url}: {action}: the bytes do not hash to the digest",
                registry=self.url,
                action=action,
            )
        return response.content

    def image_facts(self, repository: str, reference: str) -> ImageFacts:
        """What an image is, read from the registry alone (its manifest and config): the same facts
        whichever builder pushed it. Two requests."""
        manifest = self.manifest(repository, reference)
        if manifest.config is None:
            raise RegistryError(
                f"registry {self.url}: {image_reference(repository, reference)} is an index, not an image",
                registry=self.url,
                action="read image facts",
            )
        config = json.loads(self.blob(repository, manifest.config.digest))
        labels = (config.get("config") or {}).get("Labels") or {}
        annotations = manifest.json.get("annotations") or {}
        return ImageFacts(
            digest=manifest.digest,
            size=manifest.size,
            created=_parse_timestamp(config.get("created")),
            labels=dict(labels),
            annotations=dict(annotations),
        )

    def push_blob(self, repository: str, data: bytes) -> str:
        """Upload `data` as a blob unless the registry already has it (monolithic upload); its digest."""
        validate_repository(repository)
        digest = sha256_digest(data)
        if self.blob_exists(repository, digest):
            return digest
        action = f"upload blob {digest} to {repository}"
        scope = f"repository:{repository}:pull,push"
        started = self._request(
            "POST", f"/v2/{repository}/blobs/uploads/", action=action, scope=scope, expect=(202,)
        )
        location = started.headers.get("Location")
        if not location:
            raise RegistryError(
                f"registry {self.url}: {action}: no upload Location in the answer",
                registry=self.url,
                action=action,
            )
        origin, path = self._resolve(location)
        if origin != self.url:
            raise RegistryError(
                f"registry {self.url}: {action}: the upload was redirected to {origin}",
                registry=self.url,
                action=action,
            )
        self._request(
            "PUT",
            path,
            action=action,
            scope=scope,
            params={"digest": digest},
            headers={"Content-Type": "application/octet-stream"},
            data=data,
            expect=(201,),
        )
        return digest

    def put_manifest(
        self, repository: str, reference: str, raw: bytes, media_type: str, *, action: str | None = None
    ) -> str:
        """Store manifest bytes under `reference` (a tag); returns the digest the registry stored."""
        validate_repository(repository)
        validate_reference(reference)
        digest = sha256_digest(raw)
        action = action or f"put manifest {image_reference(repository, reference)}"
        response = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            action=action,
            scope=f"repository:{repository}:pull,push",
            headers={"Content-Type": media_type},
            data=raw,
        )
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatch(
                f"registry {self.url}: {action}: the registry stored the manifest as {stored}",
                registry=self.url,
                action=action,
            )
        return digest

    def check_push_access(self, repository: str) -> None:
        """Prove that we may push to `repository`: open a blob upload session, then cancel it.

        Nothing is stored. Fails with RegistryUnauthorized/RegistryForbidden when the credentials may
        only read (or not even that), which otherwise surfaces only at the end of a long build.
        """
        validate_repository(repository)
        action = f"start an upload to {repository} (push access check)"
        response = self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            action=action,
            scope=f"repository:{repository}:pull,push",
            expect=(202,),
        )
        location = response.headers.get("Location")
        origin, path = self._resolve(location) if location else (None, "")
        if origin == self.url:
            # Best effort: cancelling needs the `delete` action, which a push-only account may lack;
            # the registry purges an abandoned, empty upload by itself.
            with contextlib.suppress(RegistryError):
                self._request(
                    "DELETE",
                    path,
                    action=f"cancel the upload to {repository}",
                    scope=f"repository:{repository}:delete",
                    allow=(404, 405),
                )

    def _resolve(self, location: str) -> tuple[str, str]:
        """A Location or Link the registry answered, as (origin, path with query) against our URL."""
        target = urlsplit(urljoin(self.url + "/", location))
        return f"{target.scheme}://{target.netloc}", target.path + (
            f"?{target.query}" if target.query else ""
        )

    # -- requests, authentication, errors ----------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        action: str,
        scope: str,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        allow: tuple[int, ...] = (),
        expect: tuple[int, ...] | None = None,
        allow_redirects: bool = False,
    ) -> requests.Response:
        """Send a request, answering the registry's auth challenge once; raise RegistryError on failure.

        `scope` is the token scope this kind of request needs ("" for /v2/): a cached token for that scope
        goes out with the first try. Tokens are cached under the scope the registry's challenge named, so a
        request whose `scope` differs from what the registry asks for is just challenged again.
        """
        url = self.url + path

        def send(authorization: str | None) -> requests.Response:
            all_headers = dict(headers or {})
            if authorization:
                all_headers["Authorization"] = authorization
            try:
                return self._session.request(
                    method,
                    url,
                    headers=all_headers,
                    data=data,
                    params=params,
                    timeout=self.timeout_s,
                    verify=self.verify_tls,
                    allow_redirects=allow_redirects,
                )
            except requests.exceptions.SSLError as exc:
                raise RegistryUnreachable(
                    f"registry {self.url}: {action}: {_tls_failure(exc, self.verify_tls)}",
                    registry=self.url,
                    action=action,
                ) from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise RegistryUnreachable(
                    f"registry {self.url} is unreachable: {action}: {_connection_failure(exc)}",
                    registry=self.url,
                    action=action,
                ) from exc
            except requests.RequestException as exc:
                raise RegistryError(
                    f"registry {self.url}: {action}: request failed ({type(exc).__name__})",
                    registry=self.url,
                    action=action,
                ) from exc
            except OSError as exc:  # requests: a CA bundle path that does not exist
                raise RegistryError(
                    f"registry {self.url}: {action}: cannot use the CA bundle {self.verify_tls!r}: {exc}",
                    registry=self.url,
                    action=action,
                ) from exc

        response = send(self._known_authorization(scope))
        if response.status_code == 401:
            challenge = Challenge.parse(response.headers.get("WWW-Authenticate"))
            response = send(self._answer(challenge, action))
            if response.status_code == 401:
                raise self._unauthorized(response, action)
        ok = expect if expect is not None else tuple(range(200, 300))
        if response.status_code in ok or response.status_code in allow:
            return response
        raise self._failure(response, action)

    def _known_authorization(self, scope: str) -> str | None:
        with self._lock:
            if self._use_basic:
                return _basic(self.username or "", self._password)
            cached = self._tokens.get(_scope_key(scope))
        if cached and cached[1] - _TOKEN_MARGIN_S > time.monotonic():
            return cached[0]
        return None

    def _answer(self, challenge: Challenge | None, action: str) -> str:
        """The Authorization header that answers `challenge`."""
        if challenge is None:
            raise RegistryUnauthorized(
                f"registry {self.url}: {action}: HTTP 401 without a WWW-Authenticate challenge",
                registry=self.url,
                action=action,
                status=401,
            )
        if challenge.scheme == "basic":
            if not self.username:
                raise RegistryUnauthorized(
                    f"registry {self.url}: {action}: the registry requires credentials, none are configured",
                    registry=self.url,
                    action=action,
                    status=401,
                )
            with self._lock:
                self._use_basic = True
            return _basic(self.username, self._password)
        if challenge.scheme == "bearer":
            authorization, expires_at = self._fetch_token(challenge, action)
            with self._lock:
                self._tokens[_scope_key(challenge.params.get("scope", ""))] = (authorization, expires_at)
            return authorization
        raise RegistryUnauthorized(
            f"registry {self.url}: {action}: unsupported authentication scheme {challenge.scheme!r}",
            registry=self.url,
            action=action,
            status=401,
        )

    def _fetch_token(self, challenge: Challenge, action: str) -> tuple[str, float]:
        """Ask the token service named by a Bearer challenge for a token (docker token protocol)."""
        realm = challenge.params.get("realm")
        if not realm or urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryUnauthorized(
                f"registry {self.url}: {action}: Bearer challenge without a usable realm",
                registry=self.url,
                action=action,
                status=401,
            )
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        for scope in (challenge.params.get("scope") or "").split():
            params.append(("scope", scope))
        if self.username:
            params.append(("account", self.username))
        headers = {"Authorization": _basic(self.username, self._password)} if self.username else {}
        what = f"token service {realm}"
        try:
            response = self._session.get(
                realm, params=params, headers=headers, timeout=self.timeout_s, verify=self.verify_tls
            )
        except requests.RequestException as exc:
            raise RegistryUnreachable(
                f"registry {self.url}: {action}: {what} is unreachable "
                f"({_connection_failure(exc, self.verify_tls)})",
                registry=self.url,
                action=action,
            ) from exc
        if response.status_code == 401:
            who = f"user {self.username!r}" if self.username else "anonymous access"
            raise RegistryUnauthorized(
                f"registry {self.url}: {action}: {what} rejected the credentials of {who} (HTTP 401)",
                registry=self.url,
                action=action,
                status=401,
            )
        if response.status_code != 200:
            raise RegistryError(
                f"registry {self.url}: {action}: {what} answered HTTP {response.status_code}",
                registry=self.url,
                action=action,
                status=response.status_code,
            )
        try:
            answer = response.json()
            token = answer.get("token") or answer.get("access_token")
            expires_in = float(answer.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token, expires_in = None, 0.0
        if not token or not isinstance(token, str):
            raise RegistryError(
                f"registry {self.url}: {action}: {what} answered without a token",
                registry=self.url,
                action=action,
                status=response.status_code,
            )
        return f"Bearer {token}", time.monotonic() + expires_in

    def _unauthorized(self, response: requests.Response, action: str) -> RegistryError:
        challenge = Challenge.parse(response.headers.get("WWW-Authenticate"))
        if challenge and challenge.params.get("error") == "insufficient_scope":
            who = f"user {self.username!r}" if self.username else "anonymous access"
            reason = f"{who} lacks the access it needs ({challenge.params.get('scope', 'unknown scope')})"
        elif self.username:
            reason = f"the registry rejected the credentials of user {self.username!r}"
        else:
            reason = "the registry requires credentials and none are configured"
        codes = _error_codes(response)
        return RegistryUnauthorized(
            f"registry {self.url}: {action}: {reason} (HTTP 401{', ' + codes if codes else ''})",
            registry=self.url,
            action=action,
            status=401,
        )

    def _failure(self, response: requests.Response, action: str) -> RegistryError:
        status = response.status_code
        codes = _error_codes(response)
        detail = f"HTTP {status}{', ' + codes if codes else ''}"
        kind: type[RegistryError] = RegistryError
        if status == 403:
            kind, what = RegistryForbidden, "forbidden"
        elif status == 404:
            kind, what = RegistryNotFound, "not found"
        else:
            what = "unexpected answer"
        return kind(
            f"registry {self.url}: {action}: {what} ({detail})",
            registry=self.url,
            action=action,
            status=status,
        )

    def _parse_manifest(self, response: requests.Response, reference: str, action: str) -> Manifest:
        raw = response.content
        actual = sha256_digest(raw)
        announced = response.headers.get("Docker-Content-Digest")
        expected = reference if is_digest(reference) else announced
        for claimed in {announced, expected} - {None}:
            if claimed and claimed.startswith("sha256:") and claimed != actual:
                raise DigestMismatch(
                    f"registry {self.url}: {action}: the manifest's bytes hash to {actual}, "
                    f"not to the digest {claimed}",
                    registry=self.url,
                    action=action,
                    status=response.status_code,
                )
        try:
            document = json.loads(raw)
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            media_type = document.get("mediaType") or response.headers.get("Content-Type", "").split(";")[0]
            if media_type not in MANIFEST_MEDIA_TYPES:
                raise ValueError(f"unsupported manifest media type {media_type!r}")
            config = Descriptor.from_json(document["config"]) if "config" in document else None
            layers = tuple(Descriptor.from_json(layer) for layer in document.get("layers") or [])
            children = tuple(Descriptor.from_json(child) for child in document.get("manifests") or [])
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(
                f"registry {self.url}: {action}: not a manifest we can read ({exc})",
                registry=self.url,
                action=action,
                status=response.status_code,
            ) from exc
        return Manifest(
            digest=actual,
            media_type=media_type,
            raw=raw,
            json=document,
            config=config,
            layers=layers,
            manifests=children,
        )


@dataclass(frozen=True)
class HarborArtifact:
    """An artifact as Harbor's management API describes it."""

    digest: str
    manifest_media_type: str
    size: int
    tags: tuple[str, ...]
    push_time: str | None
    raw: dict[str, Any] = field(repr=False)


class HarborClient(RegistryClient):
    """A Harbor registry: the distribution API plus the few calls of Harbor's API (`/api/v2.0`) we need.

    Harbor's API takes Basic credentials directly (robot accounts and CLI secrets included); without a
    username it is called anonymously, which sees public projects only.
    """

    flavor: Flavor = "harbor"

    def project_exists(self, project: str) -> bool:
        """Whether the project exists (and is visible to these credentials)."""
        action = f"look up Harbor project {project!r}"
        response = self._api(
            "GET", "/api/v2.0/projects", action, params={"name": project, "page_size": "100"}
        )
        try:
            projects = response.json() or []
            return any(isinstance(item, dict) and item.get("name") == project for item in projects)
        except ValueError as exc:
            raise RegistryError(
                f"registry {self.url}: {action}: the answer is not Harbor's project list JSON",
                registry=self.url,
                action=action,
                status=response.status_code,
            ) from exc

    def artifact(self, project: str, repository: str, reference: str) -> HarborArtifact:
        """The artifact `project/repository:reference` (tag or digest) as Harbor records it.

        `repository` is the name inside the project (it may contain `/`, which Harbor wants double
        URL-encoded in the path: `a/b` becomes `a%252Fb`).
        """
        validate_repository(f"{project}/{repository}")
        validate_reference(reference)
        action = f"get Harbor artifact {image_reference(f'{project}/{repository}', reference)}"
        encoded = quote(quote(repository, safe=""), safe="")
        path = (
            f"/api/v2.0/projects/{quote(project, safe='')}/repositories/{encoded}"
            f"/artifacts/{quote(reference, safe=':')}"
        )
        response = self._api("GET", path, action, params={"with_tag": "true"})
        try:
            data = response.json()
            return HarborArtifact(
                digest=str(data["digest"]),
                manifest_media_type=str(data.get("manifest_media_type") or ""),
                size=int(data.get("size") or 0),
                tags=tuple(str(tag["name"]) for tag in data.get("tags") or []),
                push_time=data.get("push_time"),
                raw=data,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RegistryError(
                f"registry {self.url}: {action}: the answer is not Harbor's artifact JSON",
                registry=self.url,
                action=action,
                status=response.status_code,
            ) from exc

    def _api(
        self, method: str, path: str, action: str, params: Mapping[str, str] | None = None
    ) -> requests.Response:
        authorization = _basic(self.username, self._password) if self.username else None
        headers = {"Accept": "application/json"}
        if authorization:
            headers["Authorization"] = authorization
        try:
            response = self._session.request(
                method,
                self.url + path,
                headers=headers,
                params=params,
                timeout=self.timeout_s,
                verify=self.verify_tls,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise RegistryUnreachable(
                f"registry {self.url} is unreachable: {action}: {_connection_failure(exc, self.verify_tls)}",
                registry=self.url,
                action=action,
            ) from exc
        if response.status_code == 401:
            raise self._unauthorized(response, action)
        if not 200 <= response.status_code < 300:
            raise self._failure(response, action)
        return response


def registry_client(
    url: str,
    username: str | None = None,
    password: str | None = None,
    *,
    flavor: Flavor = "distribution",
    verify_tls: bool | str = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> RegistryClient:
    """A client for the registry's flavor: `HarborClient` for Harbor, `RegistryClient` otherwise."""
    if flavor not in ("distribution", "harbor"):
        raise ValueError(f"registry flavor must be 'distribution' or 'harbor', got {flavor!r}")
    kind = HarborClient if flavor == "harbor" else RegistryClient
    return kind(url, username, password, verify_tls=verify_tls, timeout_s=timeout_s)
