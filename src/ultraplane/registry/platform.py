"""ultraplane's registry extensions under /ultraplane/v1/: audit, managed signing, lifecycle and archive, the
in-use set, and the admission webhook; plus the hooks the Distribution API calls on push, delete and pull.

Routes (admin: a token holding `registry:catalog:*`, which only users with `*=pull,push,delete` get):
  GET  /ultraplane/v1/audit?repository=&action=&since=&limit=          admin
  GET  /ultraplane/v1/signing/keys  (JWKS + PEM + certificates)        anyone
  GET  /ultraplane/v1/signing/keys.pem                                 anyone
  POST /ultraplane/v1/signing/rotate                                   admin
  POST /ultraplane/v1/signing/sign   {"repository", "reference"}       admin
  POST /ultraplane/v1/signing/verify {"repository", "reference"}       pull on the repository
  GET|PUT /ultraplane/v1/inuse       {"digests": [...]}                admin
  GET|PUT|DELETE /ultraplane/v1/repositories/NAME/lifecycle            admin
  POST /ultraplane/v1/repositories/NAME/lifecycle/preview [policy]     admin
  POST /ultraplane/v1/repositories/NAME/lifecycle/run                  admin (evaluate and apply now)
  GET  /ultraplane/v1/repositories/NAME/archive                        admin
  POST /ultraplane/v1/repositories/NAME/archive/DIGEST                 admin
  POST|GET /ultraplane/v1/repositories/NAME/restore/DIGEST             admin (202 + status / status)
  POST /ultraplane/v1/admission      AdmissionReview v1                anyone (a ValidatingWebhook)
  GET  /ultraplane/v1/findings/NAME@DIGEST  scan findings (--advisories)   pull on the repository
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import fnmatch
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ultraplane.registry import signing
from ultraplane.registry.admission import AdmissionPolicy, review
from ultraplane.registry.archive import Archive, revision_mtime, revisions, tags_by_digest
from ultraplane.registry.audit import AuditLog
from ultraplane.registry.auth import Grant, Scope
from ultraplane.registry.errors import RegistryError
from ultraplane.registry.http import Request, Response
from ultraplane.registry.lifecycle import Evaluation, ImageInfo, evaluate, parse_policy
from ultraplane.registry.manifests import IMAGE_KINDS, INDEX_KINDS, parse_manifest
from ultraplane.registry.names import check_name, check_reference, parse_digest
from ultraplane.registry.storage import Storage

log = logging.getLogger("ultraplane.registry.platform")

ADMIN = Scope("registry", "catalog", ("*",))
_JSON = ("Content-Type", "application/json")
_BODY_LIMIT = 1 << 20
_REPO_ROUTE = re.compile(r"/ultraplane/v1/repositories/(.+)/(lifecycle(?:/preview|/run)?|archive|"
                         r"archive/[^/]+|restore/[^/]+)")


def _json(status: int, document: Any) -> Response:
    return Response(status, [_JSON], orjson.dumps(document))


def _bad_request(message: str) -> RegistryError:
    return RegistryError("UNSUPPORTED", status=400, message=message)


def _parse_since(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError as exc:
        raise _bad_request(f"since must be unix seconds or RFC 3339, got {text!r}") from exc


@dataclass
class PlatformConfig:
    sign_repositories: list[str] = field(default_factory=list)  # globs signed on push
    require_signature: list[str] = field(default_factory=list)  # globs the admission check guards
    lifecycle_interval: float = 3600.0
    public_host: str | None = None  # the host[:port] signatures name in docker-reference


class Platform:
    def __init__(self, data_dir: Path, storage: Storage, config: PlatformConfig, *, fsync: bool = False) -> None:
        self.storage = storage
        self.config = config
        self.audit = AuditLog(data_dir / "audit", fsync=fsync)
        self.keys = signing.KeyRing(data_dir / "signing")
        self.archive = Archive(data_dir / "archive", storage)
        self.state = data_dir / "lifecycle"
        self.state.mkdir(parents=True, exist_ok=True)
        self.policies: dict[str, Any] = self._load("policies.json", {})
        self.in_use: set[str] = set()
        self._in_use_mtime = -1.0
        self.refresh_in_use()
        self.pulls: dict[str, float] = self._load("pulls.json", {})  # "repo@digest" -> last pull
        self.admission = AdmissionPolicy(config.require_signature)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._evaluator: asyncio.Task[None] | None = None
        self._lifecycle_lock = asyncio.Lock()  # the background evaluator and an API run never interleave
        self.authorize: Any = None  # set by RegistryApi: (request, scope) -> Grant | None
        self.scanner: Any = None  # a scanonpush.PushScanner when the registry scans on push

    # -- persistence ----------------------------------------------------------------------------------------

    def _load(self, name: str, default: Any) -> Any:
        try:
            return orjson.loads((self.state / name).read_bytes())
        except FileNotFoundError:
            return default

    def _save(self, name: str, document: Any) -> None:
        staging = self.state / f"{name}.tmp"
        staging.write_bytes(orjson.dumps(document))
        os.replace(staging, self.state / name)

    def refresh_in_use(self) -> set[str]:
        """The in-use set, re-read when DATA_DIR/lifecycle/inuse.json changed (a live inventory may write the
        file directly instead of calling PUT /ultraplane/v1/inuse)."""
        try:
            mtime = (self.state / "inuse.json").stat().st_mtime
        except FileNotFoundError:
            return self.in_use
        if mtime != self._in_use_mtime:
            self.in_use = set(self._load("inuse.json", {}).get("digests", []))
            self._in_use_mtime = mtime
        return self.in_use

    # -- hooks from the Distribution API --------------------------------------------------------------------

    @staticmethod
    def who(grant: Grant | None) -> str:
        return grant.subject if grant is not None and grant.subject else "anonymous"

    def pushed(self, request: Request, grant: Grant | None, name: str, reference: str, digest: str,
               media_type: str, subject: str | None) -> None:
        self.audit.append("push", who=self.who(grant), source=request.peer, repository=name, reference=reference,
                          digest=digest, mediaType=media_type)
        if subject is not None or (reference.startswith("sha") and reference.endswith((".sig", ".att", ".sbom"))):
            return  # attachments (referrers, cosign tags) are never signed (nor scanned) themselves
        if self.scanner is not None and media_type in IMAGE_KINDS | INDEX_KINDS:
            self.scanner.submit(name, digest, media_type)
        if media_type in IMAGE_KINDS | INDEX_KINDS and any(fnmatch.fnmatchcase(name, pattern)
                                                           for pattern in self.config.sign_repositories):
            self.sign(name, digest, self._host(request), who="registry", source=request.peer, policy=True)

    def deleted(self, request: Request, grant: Grant | None, name: str, reference: str,
                digest: str | None) -> None:
        self.audit.append("delete", who=self.who(grant), source=request.peer, repository=name,
                          reference=reference, digest=digest)

    def pulled(self, name: str, digest: str) -> None:
        self.pulls[f"{name}@{digest}"] = time.time()

    def _host(self, request: Request) -> str:
        host = self.config.public_host or request.header("host") or "localhost"
        return host if re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", host) else "localhost"

    # -- signing --------------------------------------------------------------------------------------------

    def sign(self, name: str, digest: str, host: str, *, who: str, source: str, policy: bool = False) -> dict[str, Any]:
        media_type = self.storage.manifest_media_type(name, digest)
        if media_type is None:
            raise RegistryError("MANIFEST_UNKNOWN", {"digest": digest})
        size = self.storage.blob_size(digest) or 0
        key = self.keys.active
        # cosign: add this key's layer to the signature image (replacing an earlier one by the same key).
        payload, layer = signing.cosign_layer(key, f"{host}/{name}", digest)
        tag = signing.cosign_tag(digest)
        layers: list[dict[str, Any]] = []
        existing = self.storage.resolve_tag(name, tag)
        if existing is not None:
            with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError, KeyError):
                for old in orjson.loads(self.storage.read_manifest(existing))["layers"]:
                    if not self._cosign_layer_by(old, key):
                        layers.append(old)
        layers.append(layer)
        config = signing.cosign_config(layer["digest"])
        self._put_blobs(name, payload, config)
        cosign_manifest = signing.cosign_manifest(layers, config)
        self._put_manifest(name, cosign_manifest, tag)
        # Notation: a referrer carrying a JWS envelope over the target descriptor.
        target = {"mediaType": media_type, "digest": digest, "size": size}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        envelope = signing.notation_envelope(key, target, now)
        self._put_blobs(name, envelope, signing.EMPTY_CONFIG)
        notation_manifest = signing.notation_manifest(envelope, target, key, now)
        self._put_manifest(name, notation_manifest, None)
        result = {"digest": digest, "kid": key.kid, "cosign": {"tag": tag, "digest": signing.sha256(cosign_manifest)},
                  "notation": {"digest": signing.sha256(notation_manifest)}}
        self.audit.append("sign", who=who, source=source, repository=name, reference=tag, digest=digest,
                          kid=key.kid, byPolicy=policy)
        return result

    def _cosign_layer_by(self, layer: dict[str, Any], key: signing.SigningKey) -> bool:
        try:
            payload = self.storage.read_manifest(layer["digest"])
        except (FileNotFoundError, KeyError, RegistryError):
            return False
        claimed = orjson.loads(payload)["critical"]["image"]["docker-manifest-digest"]
        return signing.verify_cosign_layer([key.public], layer, payload, claimed) is None

    def _put_blobs(self, name: str, *contents: bytes) -> None:
        for content in contents:
            digest = signing.sha256(content)
            self.storage.put_blob(digest, content)
            self.storage.link_blob(name, digest)

    def _put_manifest(self, name: str, data: bytes, tag: str | None) -> None:
        parsed = parse_manifest(signing.OCI_MANIFEST, data)
        digest = signing.sha256(data)
        self.storage.put_manifest(name, digest, parsed.media_type, data, tag=tag,
                                  references=parsed.blobs + parsed.manifests, subject=parsed.subject,
                                  descriptor=parsed.descriptor(digest, len(data)))

    def verify(self, name: str, reference: str) -> dict[str, Any]:
        """Check both signature forms of the image `reference` names against every registry key."""
        tag, digest = check_reference(reference)
        if tag is not None:
            digest = self.storage.resolve_tag(name, tag)
        media_type = self.storage.manifest_media_type(name, digest) if digest else None
        if digest is None or media_type is None:
            return {"repository": name, "reference": reference, "verified": False,
                    "cosign": {"valid": False, "problems": ["image not found"]},
                    "notation": {"valid": False, "problems": ["image not found"]}}
        publics = [key.public for key in self.keys.keys.values()]
        cosign_problems: list[str] = []
        cosign_valid = False
        sig_digest = self.storage.resolve_tag(name, signing.cosign_tag(digest))
        if sig_digest is None:
            cosign_problems.append(f"no {signing.cosign_tag(digest)} signature")
        else:
            for layer in self._manifest(sig_digest).get("layers") or []:
                try:
                    payload = self.storage.read_manifest(layer["digest"])
                except (FileNotFoundError, KeyError, TypeError, RegistryError):
                    cosign_problems.append("a signature payload is missing")
                    continue
                problem = signing.verify_cosign_layer(publics, layer, payload, digest)
                if problem is None:
                    cosign_valid = True
                else:
                    cosign_problems.append(problem)
        target = {"mediaType": media_type, "digest": digest, "size": self.storage.blob_size(digest)}
        notation_problems: list[str] = []
        notation_valid = False
        signatures = [d for d in self.storage.referrers(name, digest)
                      if d.get("artifactType") == signing.NOTATION_ARTIFACT]
        if not signatures:
            notation_problems.append("no Notation signature referrer")
        for descriptor in signatures:
            layers = self._manifest(descriptor["digest"]).get("layers") or []
            envelopes = [layer for layer in layers if layer.get("mediaType") == signing.JOSE_TYPE]
            for layer in envelopes:
                try:
                    envelope = self.storage.read_manifest(layer["digest"])
                except (FileNotFoundError, RegistryError):
                    notation_problems.append("a signature envelope is missing")
                    continue
                if signing.sha256(envelope) != layer["digest"]:
                    notation_problems.append("the envelope does not match its layer digest")
                    continue
                problem = signing.verify_notation_envelope(self.keys, envelope, target)
                if problem is None:
                    notation_valid = True
                else:
                    notation_problems.append(problem)
        return {"repository": name, "reference": reference, "digest": digest,
                "verified": cosign_valid or notation_valid,
                "cosign": {"valid": cosign_valid, "problems": [] if cosign_valid else cosign_problems},
                "notation": {"valid": notation_valid, "problems": [] if notation_valid else notation_problems}}

    def _manifest(self, digest: str) -> dict[str, Any]:
        try:
            document = orjson.loads(self.storage.read_manifest(digest))
        except (FileNotFoundError, orjson.JSONDecodeError):
            return {}
        return document if isinstance(document, dict) else {}

    # -- lifecycle ------------------------------------------------------------------------------------------

    def images(self, name: str) -> list[ImageInfo]:
        """The repository's images: manifests that are not attachments (referrers or cosign tags)."""
        by_digest = tags_by_digest(self.storage, name)
        found = []
        for digest in revisions(self.storage, name):
            tags = [t for t in by_digest.get(digest, []) if not (t.startswith("sha") and t.endswith(
                (".sig", ".att", ".sbom")))]
            if "subject" in self._manifest(digest) or (by_digest.get(digest) and not tags):
                continue
            found.append(ImageInfo(digest, sorted(tags), revision_mtime(self.storage, name, digest),
                                   self.pulls.get(f"{name}@{digest}")))
        return found

    def preview(self, name: str, document: Any | None = None) -> Evaluation:
        document = self.policies.get(name) if document is None else document
        if document is None:
            raise RegistryError("NAME_UNKNOWN", {"name": name}, message="no lifecycle policy for this repository")
        return evaluate(parse_policy(document), self.images(name), self.refresh_in_use())

    async def apply(self, name: str) -> list[dict[str, Any]]:
        async with self._lifecycle_lock:
            return await self._apply(name)

    async def _apply(self, name: str) -> list[dict[str, Any]]:
        applied = []
        for decision in self.preview(name).decisions:
            if decision.protected or decision.digest in self.in_use:
                continue
            if self.storage.manifest_media_type(name, decision.digest) is None:
                continue  # gone meanwhile, or already taken with another image's attachments
            if decision.action == "archive":
                group = await self.archive.archive(name, decision.digest)
                action = "archive"
            else:
                group = self.archive.expire(name, decision.digest)
                action = "delete"
            for digest in group:
                self.audit.append(action, who="lifecycle", source="registry", repository=name, digest=digest,
                                  rulePriority=decision.rule, cascadeOf=None if digest == decision.digest
                                  else decision.digest)
            applied.append({**decision.as_json(), "affected": group})
        return applied

    async def run_lifecycle(self) -> dict[str, list[dict[str, Any]]]:
        results = {}
        for name in sorted(self.policies):
            try:
                results[name] = await self.apply(name)
            except RegistryError as exc:
                log.warning("lifecycle of %s: %s", name, exc)
        self._save("pulls.json", self.pulls)
        return results

    async def _evaluate_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.lifecycle_interval)
            try:
                await self.run_lifecycle()
            except Exception:
                log.exception("lifecycle evaluation failed")

    def start(self) -> None:
        if self.config.lifecycle_interval > 0:
            self._evaluator = asyncio.ensure_future(self._evaluate_periodically())

    async def close(self) -> None:
        for task in [self._evaluator, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.scanner is not None:
            await self.scanner.close()
        self._save("pulls.json", self.pulls)
        self.audit.close()

    # -- HTTP -----------------------------------------------------------------------------------------------

    async def _body(self, request: Request) -> Any:
        data = await request.body.read_all(_BODY_LIMIT)
        if data is None:
            raise RegistryError("SIZE_INVALID", status=413, message="request body too large")
        if not data.strip():
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise _bad_request(f"request body is not JSON: {exc}") from exc

    def _admin(self, request: Request) -> Grant | None:
        return self.authorize(request, ADMIN)  # type: ignore[no-any-return]

    async def handle(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == "/ultraplane/v1/signing/keys" and method == "GET":
            return _json(200, self.keys.public_document())
        if path == "/ultraplane/v1/signing/keys.pem" and method == "GET":
            pem = "".join(key.public_pem() for key in self.keys.keys.values())
            return Response(200, [("Content-Type", "application/x-pem-file")], pem.encode())
        if path == "/ultraplane/v1/admission" and method == "POST":
            return _json(200, review(await self._body(request), self.admission, self.verify))
        if path == "/ultraplane/v1/signing/verify" and method == "POST":
            name, reference = self._target(await self._body(request))
            grant = self.authorize(request, Scope("repository", name, ("pull",)))
            result = self.verify(name, reference)
            self.audit.append("verify", who=self.who(grant), source=request.peer, repository=name,
                              reference=reference, digest=result.get("digest"), verified=result["verified"])
            return _json(200, result)
        if path.startswith("/ultraplane/v1/findings/") and method == "GET" and self.scanner is not None:
            name, _, digest = path.removeprefix("/ultraplane/v1/findings/").rpartition("@")
            self.authorize(request, Scope("repository", check_name(name), ("pull",)))
            parse_digest(digest)
            found = self.scanner.findings(digest)
            if found is None or found.get("repository") != name:
                raise RegistryError("MANIFEST_UNKNOWN", {"digest": digest}, status=404,
                                    message="no findings for this digest (not scanned, or no advisories loaded)")
            return _json(200, found)
        grant = self._admin(request)
        who = self.who(grant)
        if path == "/ultraplane/v1/audit" and method == "GET":
            since = request.param("since")
            limit = request.param("limit") or "1000"
            if not limit.isdigit():
                raise _bad_request("limit must be a non-negative integer")
            records = self.audit.query(repository=request.param("repository"), action=request.param("action"),
                                       since=_parse_since(since) if since else None, limit=int(limit))
            return _json(200, {"records": records})
        if path == "/ultraplane/v1/signing/rotate" and method == "POST":
            key = self.keys.rotate()
            self.audit.append("rotate-key", who=who, source=request.peer, kid=key.kid)
            return _json(200, self.keys.public_document())
        if path == "/ultraplane/v1/signing/sign" and method == "POST":
            name, reference = self._target(await self._body(request))
            tag, digest = check_reference(reference)
            digest = self.storage.resolve_tag(name, tag) if tag is not None else digest
            if digest is None:
                raise RegistryError("MANIFEST_UNKNOWN", {"tag": tag})
            return _json(200, self.sign(name, digest, self._host(request), who=who, source=request.peer))
        if path == "/ultraplane/v1/inuse":
            if method == "PUT":
                document = await self._body(request)
                digests = document.get("digests") if isinstance(document, dict) else None
                if not isinstance(digests, list):
                    raise _bad_request('want {"digests": ["sha256:...", ...]}')
                for digest in digests:
                    parse_digest(digest)
                self.in_use = set(digests)
                self._save("inuse.json", {"digests": sorted(self.in_use)})
                self.audit.append("inuse", who=who, source=request.peer, count=len(self.in_use))
                return _json(200, {"digests": sorted(self.in_use)})
            if method == "GET":
                return _json(200, {"digests": sorted(self.in_use)})
        if path == "/ultraplane/v1/lifecycle/run" and method == "POST":
            return _json(200, {"applied": await self.run_lifecycle()})
        match = _REPO_ROUTE.fullmatch(path)
        if match is not None:
            return await self._repository_route(request, check_name(match.group(1)), match.group(2), who)
        raise RegistryError("UNSUPPORTED", status=404, message="no such endpoint")

    @staticmethod
    def _target(document: Any) -> tuple[str, str]:
        if not isinstance(document, dict) or not isinstance(document.get("repository"), str) \
                or not isinstance(document.get("reference"), str):
            raise _bad_request('want {"repository": NAME, "reference": TAG or DIGEST}')
        return check_name(document["repository"]), document["reference"]

    async def _repository_route(self, request: Request, name: str, action: str, who: str) -> Response:
        method = request.method
        if action == "lifecycle":
            if method == "PUT":
                document = await self._body(request)
                parse_policy(document)
                self.policies[name] = document
                self._save("policies.json", self.policies)
                self.audit.append("policy", who=who, source=request.peer, repository=name)
                return _json(200, {"repositoryName": name, "lifecyclePolicyText": document})
            if method == "GET":
                if name not in self.policies:
                    raise RegistryError("NAME_UNKNOWN", {"name": name},
                                        message="no lifecycle policy for this repository")
                return _json(200, {"repositoryName": name, "lifecyclePolicyText": self.policies[name]})
            if method == "DELETE":
                self.policies.pop(name, None)
                self._save("policies.json", self.policies)
                return _json(202, {})
        if action == "lifecycle/preview" and method == "POST":
            return _json(200, {"repositoryName": name, **self.preview(name, await self._body(request)).as_json()})
        if action == "lifecycle/run" and method == "POST":
            return _json(200, {"applied": await self.apply(name)})
        if action == "archive" and method == "GET":
            return _json(200, {"repositoryName": name, "archived": self.archive.archived(name)})
        if action.startswith("archive/") and method == "POST":
            digest = action.split("/", 1)[1]
            parse_digest(digest)
            if self.storage.manifest_media_type(name, digest) is None:
                raise RegistryError("MANIFEST_UNKNOWN", {"digest": digest})
            if digest in self.refresh_in_use():
                raise RegistryError("DENIED", {"digest": digest}, message="the digest is in use")
            group = await self.archive.archive(name, digest)
            for member in group:
                self.audit.append("archive", who=who, source=request.peer, repository=name, digest=member)
            return _json(200, {"archived": group})
        if action.startswith("restore/"):
            digest = action.split("/", 1)[1]
            parse_digest(digest)
            status = self.archive.restore_status(name, digest)
            if method == "GET":
                if status is None:
                    raise RegistryError("MANIFEST_UNKNOWN", {"digest": digest})
                return _json(200, status)
            if method == "POST":
                if status is None or status["status"] not in ("archived", "failed"):
                    if status is not None:
                        return _json(202, status)
                    raise RegistryError("MANIFEST_UNKNOWN", {"digest": digest},
                                        message="the digest is not archived")
                status = self.archive.start_restore(name, digest)
                task = asyncio.ensure_future(self._restore(name, digest, who, request.peer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return _json(202, status)
        raise RegistryError("UNSUPPORTED", message=f"{method} is not supported here")

    async def _restore(self, name: str, digest: str, who: str, source: str) -> None:
        try:
            restored = await self.archive.restore(name, digest)
        except Exception:
            log.exception("restoring %s@%s failed", name, digest)
            return
        for member in restored:
            self.audit.append("restore", who=who, source=source, repository=name, digest=member)

