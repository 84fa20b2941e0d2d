"""`registry.ultraplane.io/v1alpha1` Repository: a repository's lifecycle policy (ECR's JSON, as ACK's ECR
Repository carries it in spec.lifecyclePolicy) and sign-on-push, applied through the ultraplane registry's
/ultraplane/v1 API with Docker's token flow (user admin). signOnPush signs, on every resync, each tag whose
signature the registry cannot verify: images are signed within one resync of their push.
"""

from __future__ import annotations

import json
import re
import ssl
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ultraplane.compose.ack.runtime import AckController, KindInfo, Recoverable, Terminal

Obj = dict[str, Any]
# the OCI distribution spec's repository name grammar
REPOSITORY = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$")


class RegistryApi:
    def __init__(self, url: str, user: str | None, password: str | None, ca_file: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.auth = aiohttp.BasicAuth(user, password or "") if user else None
        self.ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.tokens: dict[str, str] = {}

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                status, document, challenge = await self._once(session, method, path, body, self.tokens.get(path))
                if status == 401 and challenge.startswith("Bearer "):
                    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
                    query = {k: params[k] for k in ("service", "scope") if k in params}
                    async with session.get(params["realm"], params=query, auth=self.auth, ssl=self.ssl) as got:
                        if got.status != 200:
                            raise Terminal(f"registry token request denied ({got.status}): {await got.text()}")
                        self.tokens[path] = (await got.json())["token"]
                    status, document, _ = await self._once(session, method, path, body, self.tokens[path])
                return status, document
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise Recoverable(f"registry {self.url} unreachable: {exc or type(exc).__name__}") from None

    async def _once(self, session: aiohttp.ClientSession, method: str, path: str, body: Any,
                    token: str | None) -> tuple[int, Any, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with session.request(method, self.url + path, json=body, headers=headers, ssl=self.ssl) as response:
            text = await response.text()
            try:
                document = json.loads(text) if text else None
            except json.JSONDecodeError:
                document = text
            return response.status, document, response.headers.get("WWW-Authenticate", "")


def _error(document: Any) -> str:
    errors = (document or {}).get("errors") if isinstance(document, dict) else None
    if errors:
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    return str(document)


class RepositoryManager:
    info = KindInfo("registry.ultraplane.io", "v1alpha1", "Repository", "repositories", {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "repository name (default: metadata.name)"},
            "lifecyclePolicy": {"type": "string", "description": "ECR lifecycle policy JSON text"},
            "signOnPush": {"type": "boolean", "default": False},
        },
    })

    def __init__(self, api: RegistryApi) -> None:
        self.api = api
        self.host = urlsplit(api.url).netloc

    def _name(self, obj: Obj) -> str:
        name = (obj.get("spec") or {}).get("name") or obj["metadata"]["name"]
        if not REPOSITORY.match(name) or len(name) > 255:
            raise Terminal(f"InvalidParameter: {name!r} is not a valid repository name (NAME_INVALID)")
        return name

    def identity(self, obj: Obj) -> tuple[str, str]:
        return f"arn:ultraplane:registry:local:{self.host}:repository/{self._name(obj)}", self.host

    async def sync(self, obj: Obj, controller: AckController) -> Obj:
        spec = obj.get("spec") or {}
        name = self._name(obj)
        base = f"/ultraplane/v1/repositories/{name}/lifecycle"
        policy_text = spec.get("lifecyclePolicy")
        if policy_text:
            try:
                policy = json.loads(policy_text)
            except json.JSONDecodeError as exc:
                raise Terminal(f"InvalidParameter: lifecyclePolicy is not JSON: {exc}") from None
            status, document = await self.api.request("PUT", base, policy)
            if status == 400:
                raise Terminal(f"InvalidParameter: {_error(document)}")
        else:
            status, document = await self.api.request("DELETE", base)
        if status >= 300:
            raise Recoverable(f"registry answered {status}: {_error(document)}")
        signed: list[str] = []
        if spec.get("signOnPush"):
            signed = await self._sign_unsigned(name, controller, obj)
        return {"repositoryName": name, "repositoryURI": f"{self.host}/{name}",
                "lifecyclePolicyApplied": bool(policy_text), "signOnPush": bool(spec.get("signOnPush")),
                "signedTags": signed, "endpoint": {"url": self.api.url}}

    async def _sign_unsigned(self, name: str, controller: AckController, obj: Obj) -> list[str]:
        status, document = await self.api.request("GET", f"/v2/{name}/tags/list")
        if status == 404:
            return []
        if status != 200:
            raise Recoverable(f"listing tags of {name}: {status} {_error(document)}")
        signed = []
        for tag in sorted((document or {}).get("tags") or []):
            target = {"repository": name, "reference": tag}
            status, result = await self.api.request("POST", "/ultraplane/v1/signing/verify", target)
            if status == 200 and not result.get("verified"):
                status, result = await self.api.request("POST", "/ultraplane/v1/signing/sign", target)
                if status != 200:
                    raise Recoverable(f"signing {name}:{tag}: {status} {_error(result)}")
                await controller.event(obj, "Normal", "Signed", f"signed {name}:{tag}")
            signed.append(tag)
        return signed

    async def delete(self, obj: Obj, controller: AckController) -> None:
        # the images stay: deleting a Repository object removes the policy it applied, never pushed content
        status, document = await self.api.request("DELETE", f"/ultraplane/v1/repositories/{self._name(obj)}/lifecycle")
        if status >= 300 and status != 404:
            raise Recoverable(f"registry answered {status}: {_error(document)}")
