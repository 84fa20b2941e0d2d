"""Pulls from the cluster's own registry: the kubelet resolves a tag to its digest through the registry's API.

For an image whose host is the configured registry (`127.0.0.1:5000/team/app:1.0`), the simulated
kubelet does what containerd's resolver does: HEAD/GET the manifest with the OCI and Docker Accept
headers, answer a 401 with Docker's token flow (basic credentials to the realm named in
WWW-Authenticate, then the bearer token), and read the digest from Docker-Content-Digest. The size
that times the pull is the sum of the layers (of the linux/amd64 manifest for an index).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
])
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class PullFailed(Exception):
    """containerd's message for a pull that fails (the text a pod's ErrImagePull carries)."""


@dataclass
class ResolvedImage:
    digest: str  # of the manifest (or index) the tag names: what the runtime reports in imageID
    size: int  # bytes: the sum of the layer sizes


@dataclass
class RegistryPuller:
    host: str  # HOST:PORT as images name it
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = None
    scheme: str = "https"
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)
    _tokens: dict[str, str] = field(default_factory=dict, repr=False)  # scope → bearer token

    @classmethod
    def from_flags(cls, url: str, ca_file: str | None, credentials_file: str | None) -> RegistryPuller:
        scheme, _, host = url.rpartition("://")
        username = password = None
        if credentials_file:
            username, _, password = Path(credentials_file).read_text().strip().partition(":")
        return cls(host.rstrip("/"), Path(ca_file) if ca_file else None, username, password, scheme or "https")

    def serves(self, image: str) -> bool:
        return image.split("/", 1)[0] == self.host and "/" in image

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            context = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context or True),
                                                  timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def resolve(self, image: str, credentials: list[tuple[str, str]] | None = None) -> ResolvedImage:
        """The digest and size of `image`; PullFailed with containerd's message when it cannot be pulled.
        `credentials` (from imagePullSecrets) are tried before the node's own."""
        name = image.split("/", 1)[1]
        reference = "latest"
        if "@" in name:
            name, reference = name.split("@", 1)
        elif ":" in name.rsplit("/", 1)[-1]:
            name, reference = name.rsplit(":", 1)
        prefix = f'failed to pull and unpack image "{image}": failed to resolve reference "{image}"'
        url = f"{self.scheme}://{self.host}/v2/{name}/manifests/{reference}"
        try:
            status, headers, body = await self._get(url, name, credentials or [])
            if status == 404:
                raise PullFailed(f"{prefix}: {image}: not found")
            if status in (401, 403):
                raise PullFailed(f"{prefix}: pull access denied, repository does not exist or may require "
                                 f"authorization: authorization failed: {status} {_reason(status)}")
            if status != 200:
                raise PullFailed(f"{prefix}: unexpected status from GET request to {url}: {status}")
            digest = headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()
            manifest = json.loads(body)
            media_type = manifest.get("mediaType") or headers.get("Content-Type", "")
            if media_type in INDEX_TYPES or "manifests" in manifest:
                chosen = next((m for m in manifest.get("manifests") or []
                               if (m.get("platform") or {}).get("architecture") == "amd64"
                               and (m.get("platform") or {}).get("os") == "linux"),
                              (manifest.get("manifests") or [None])[0])
                if chosen is None:
                    raise PullFailed(f"{prefix}: no match for platform in manifest: not found")
                status, _, body = await self._get(f"{self.scheme}://{self.host}/v2/{name}/manifests/"
                                                  f"{chosen['digest']}", name, credentials or [])
                if status != 200:
                    raise PullFailed(f'failed to pull and unpack image "{image}": {chosen["digest"]}: not found')
                manifest = json.loads(body)
            size = sum(int(layer.get("size", 0)) for layer in manifest.get("layers") or [])
            return ResolvedImage(digest, size)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PullFailed(f"{prefix}: failed to do request: Head \"{url}\": {exc}") from exc
        except ValueError as exc:
            raise PullFailed(f"{prefix}: invalid manifest: {exc}") from exc

    async def _get(self, url: str, name: str, credentials: list[tuple[str, str]]) -> tuple[int, dict, bytes]:
        scope = f"repository:{name}:pull"
        session = self._client()
        headers = {"Accept": MANIFEST_TYPES}
        if scope in self._tokens and not credentials:
            headers["Authorization"] = f"Bearer {self._tokens[scope]}"
        async with session.get(url, headers=headers) as response:
            status, got, body = response.status, dict(response.headers), await response.read()
            challenge = response.headers.get("WWW-Authenticate", "")
        if status != 401 or not challenge.lower().startswith("bearer"):
            return status, got, body
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        tries = [*credentials, *([(self.username, self.password)] if self.username else [])] or [("", "")]
        for username, password in tries:
            token = await self._token(params, scope, username, password)
            if token is None:
                continue
            headers["Authorization"] = f"Bearer {token}"
            async with session.get(url, headers=headers) as response:
                status, got, body = response.status, dict(response.headers), await response.read()
            if status != 401:
                if not credentials:
                    self._tokens[scope] = token
                return status, got, body
        return status, got, body

    async def _token(self, params: dict[str, str], scope: str, username: str, password: str) -> str | None:
        realm = params.get("realm")
        if not realm:
            return None
        query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
        headers = {}
        if username:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        async with self._client().get(realm, params=query, headers=headers) as response:
            if response.status != 200:
                return None
            answer = await response.json(content_type=None)
        token = answer.get("token") or answer.get("access_token")
        return str(token) if token else None


def repository_of(image: str) -> str:
    """`127.0.0.1:5000/team/app:1.0` (or `...@sha256:...`) → `127.0.0.1:5000/team/app`."""
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def _reason(status: int) -> str:
    return {401: "Unauthorized", 403: "Forbidden"}.get(status, "")


def dockerconfig_credentials(secret: dict, host: str) -> list[tuple[str, str]]:
    """(username, password) for `host` from a kubernetes.io/dockerconfigjson Secret, as the kubelet reads it."""
    data = (secret.get("data") or {}).get(".dockerconfigjson")
    if not data:
        return []
    try:
        auths = json.loads(base64.b64decode(data)).get("auths") or {}
    except ValueError:
        return []
    found = []
    for server, entry in auths.items():
        if server.removeprefix("https://").removeprefix("http://").rstrip("/") != host:
            continue
        username, password = entry.get("username"), entry.get("password")
        if not username and entry.get("auth"):
            username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        if username:
            found.append((username, password or ""))
    return found
