"""The Distribution Spec v1.1 endpoints (plus Docker's token endpoint) over `storage`.

Every request is authorized before it touches storage; names, references and digests are validated by
`names` first, so a path can never leave the data directory.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

import orjson

from ultraplane.registry.auth import Grant, Scope, TokenAuthority
from ultraplane.registry.errors import RegistryError
from ultraplane.registry.http import FileRange, Request, Response
from ultraplane.registry.manifests import MAX_MANIFEST_BYTES, OCI_INDEX, parse_manifest
from ultraplane.registry.names import check_name, check_reference, digest_of, is_tag, parse_digest
from ultraplane.registry.storage import Storage, Upload

if TYPE_CHECKING:
    from ultraplane.registry.platform import Platform

_API_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
_JSON = ("Content-Type", "application/json")
_TAGS = re.compile(r"/v2/(.+)/tags/list")
_MANIFEST = re.compile(r"/v2/(.+)/manifests/([^/]+)")
_UPLOAD_START = re.compile(r"/v2/(.+)/blobs/uploads/?")
_UPLOAD = re.compile(r"/v2/(.+)/blobs/uploads/([^/]+)")
_BLOB = re.compile(r"/v2/(.+)/blobs/([^/]+)")
_REFERRERS = re.compile(r"/v2/(.+)/referrers/([^/]+)")
_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")
_FORM_LIMIT = 64 << 10
_WRITE_BATCH = 1 << 20

RouteHandler = Callable[[Request, str, str | None], Awaitable[Response]]


def _json(status: int, document: Any, *headers: tuple[str, str]) -> Response:
    return Response(status, [_API_HEADER, _JSON, *headers], orjson.dumps(document))


def _empty(status: int, *headers: tuple[str, str]) -> Response:
    return Response(status, [_API_HEADER, *headers])


def _upload_range(upload: Upload) -> tuple[str, str]:
    # Distribution's convention: an empty session reports "0-0", otherwise the inclusive last byte.
    return ("Range", f"0-{max(upload.size - 1, 0)}")


class RegistryApi:
    def __init__(self, storage: Storage, authority: TokenAuthority | None, *, realm: str | None = None,
                 max_uploads: int = 10_000, delete_enabled: bool = True, max_blob_size: int = 0) -> None:
        self.storage = storage
        self.max_blob_size = max_blob_size  # 0: no limit
        self.authority = authority
        self.realm = realm
        self.max_uploads = max_uploads
        self.delete_enabled = delete_enabled
        self.platform: Platform | None = None  # /ultraplane/v1 extensions and push/delete/pull hooks

    async def handle(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except RegistryError as exc:
            return Response(exc.status, [_API_HEADER, _JSON, *exc.headers], exc.body())

    async def _route(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == "/token":
            return await self._token(request)
        if path.startswith("/ultraplane/") and self.platform is not None:
            return await self.platform.handle(request)
        if path in ("/v2", "/v2/"):
            self._authorize(request, None)
            return _json(200, {})
        if not path.startswith("/v2/"):
            raise RegistryError("UNSUPPORTED", status=404, message="no such endpoint")
        if path == "/v2/_catalog":
            return self._catalog(request)
        for pattern, methods in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            name = check_name(match.group(1))
            handler = methods.get("GET" if method == "HEAD" else method)
            if handler is None:
                raise RegistryError("UNSUPPORTED", {"method": method}, message=f"{method} is not supported here")
            argument = match.group(2) if pattern.groups > 1 else None
            return await handler(self, request, name, argument)
        raise RegistryError("UNSUPPORTED", status=404, message="no such endpoint")

    # -- auth -----------------------------------------------------------------------------------------------

    def _challenge(self, request: Request, scope: Scope | None, insufficient: bool) -> RegistryError:
        assert self.authority is not None
        host = request.header("host") or ""
        if not _HOST.fullmatch(host):  # never echo anything but a host[:port] into the header
            host = "localhost"
        realm = self.realm or f"{'https' if request.tls else 'http'}://{host}/token"
        parts = [f'realm="{realm}"', f'service="{self.authority.service}"']
        if scope is not None:
            parts.append(f'scope="{scope}"')
        if insufficient:
            parts.append('error="insufficient_scope"')
        detail = [{"Type": scope.type, "Name": scope.name, "Action": a} for a in scope.actions] if scope else None
        # RFC 6750: a valid token with too little scope is 403 (the spec's DENIED), with the challenge naming the
        # scope needed so that clients fetch a wider token; no or a bad token is 401 UNAUTHORIZED.
        return RegistryError("DENIED" if insufficient else "UNAUTHORIZED", detail,
                             headers=[("WWW-Authenticate", "Bearer " + ",".join(parts))])

    def _grant(self, request: Request) -> Grant | None:
        assert self.authority is not None
        header = request.header("authorization") or ""
        if header[:7].lower() != "bearer ":
            return None
        return self.authority.verify(header[7:].strip())

    def _authorize(self, request: Request, scope: Scope | None) -> Grant | None:
        """The caller's grant if it covers `scope` (None: any valid token); raises the 401 challenge."""
        if self.authority is None:
            return None
        grant = self._grant(request)
        if grant is not None and (scope is None or grant.allows(scope.type, scope.name, scope.actions)):
            return grant
        raise self._challenge(request, scope, insufficient=grant is not None)

    def _allowed(self, grant: Grant | None, name: str, action: str) -> bool:
        return self.authority is None or (grant is not None and grant.allows("repository", name, (action,)))

    async def _token(self, request: Request) -> Response:
        if self.authority is None:
            raise RegistryError("UNSUPPORTED", status=404, message="token auth is not enabled")
        params = request.query
        user: str | None = None
        password: str | None = None
        if request.method == "POST":
            form = await request.body.read_all(_FORM_LIMIT)
            if form is None:
                raise RegistryError("SIZE_INVALID", status=413, message="form too large")
            params = parse_qs(form.decode("utf-8", "replace"), keep_blank_values=True)
            if params.get("grant_type", [""])[0] == "password":
                user, password = params.get("username", [""])[0], params.get("password", [""])[0]
        elif request.method != "GET":
            raise RegistryError("UNSUPPORTED", message=f"{request.method} is not supported here")
        header = request.header("authorization") or ""
        if header[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise RegistryError("UNAUTHORIZED", message="malformed basic credentials") from exc
        if user is not None and not self.authority.users.authenticate(user, password or ""):
            raise RegistryError("UNAUTHORIZED", message="invalid username or password",
                                headers=[("WWW-Authenticate", 'Basic realm="ultraplane-registry"')])
        scopes = [scope for text in params.get("scope", []) for part in text.split(" ")
                  if (scope := Scope.parse(part)) is not None]
        document = self.authority.issue(user, scopes)
        return Response(200, [_JSON], orjson.dumps(document))

    # -- catalog and tags -----------------------------------------------------------------------------------

    def _page(self, request: Request, items: list[str], base: str) -> tuple[list[str], list[tuple[str, str]]]:
        last = request.param("last")
        if last:
            items = [item for item in items if item > last]
        count = request.param("n")
        if count is None or count == "":
            return items, []
        if not count.isdigit():
            raise RegistryError("UNSUPPORTED", {"n": count}, status=400, message="n must be a non-negative integer")
        limit = int(count)
        page = items[:limit]
        if limit == 0 or len(items) <= limit:
            return page, []
        link = f"<{base}?n={limit}&last={quote(page[-1])}>; rel=\"next\""
        return page, [("Link", link)]

    def _catalog(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            raise RegistryError("UNSUPPORTED", message=f"{request.method} is not supported here")
        self._authorize(request, Scope("registry", "catalog", ("*",)))
        names, headers = self._page(request, self.storage.catalog(), "/v2/_catalog")
        return _json(200, {"repositories": names}, *headers)

    async def _tags(self, request: Request, name: str, _: str | None) -> Response:
        self._authorize(request, Scope("repository", name, ("pull",)))
        if not self.storage.repository_exists(name):
            raise RegistryError("NAME_UNKNOWN", {"name": name})
        tags, headers = self._page(request, self.storage.tags(name), f"/v2/{name}/tags/list")
        return _json(200, {"name": name, "tags": tags}, *headers)

    # -- manifests ------------------------------------------------------------------------------------------

    def _resolve(self, name: str, reference: str) -> tuple[str, str]:
        tag, digest = check_reference(reference)
        if tag is not None:
            digest = self.storage.resolve_tag(name, tag)
            if digest is None:
                raise RegistryError("MANIFEST_UNKNOWN", {"tag": tag})
        assert digest is not None
        media_type = self.storage.manifest_media_type(name, digest)
        if media_type is None:
            raise RegistryError("MANIFEST_UNKNOWN", {"digest": digest})
        return digest, media_type

    async def _get_manifest(self, request: Request, name: str, reference: str | None) -> Response:
        assert reference is not None
        self._authorize(request, Scope("repository", name, ("pull",)))
        digest, media_type = self._resolve(name, reference)
        try:
            data = self.storage.read_manifest(digest)
        except FileNotFoundError as exc:
            raise RegistryError("MANIFEST_UNKNOWN", {"digest": digest}) from exc
        if self.platform is not None and request.method == "GET":
            self.platform.pulled(name, digest)
        return Response(200, [_API_HEADER, ("Content-Type", media_type), ("Docker-Content-Digest", digest),
                              ("ETag", f'"{digest}"')], data)

    async def _put_manifest(self, request: Request, name: str, reference: str | None) -> Response:
        assert reference is not None
        grant = self._authorize(request, Scope("repository", name, ("pull", "push")))
        tag, reference_digest = check_reference(reference)
        data = await request.body.read_all(MAX_MANIFEST_BYTES)
        if data is None:
            raise RegistryError("SIZE_INVALID", {"limit": MAX_MANIFEST_BYTES}, status=413,
                                message="manifest too large")
        parsed = parse_manifest(request.header("content-type"), data)
        algorithm = parse_digest(reference_digest)[0] if reference_digest else "sha256"
        digest = digest_of(data, algorithm)
        if reference_digest is not None and digest != reference_digest:
            raise RegistryError("DIGEST_INVALID", {"expected": reference_digest, "actual": digest})
        missing = [blob for blob in dict.fromkeys(parsed.blobs) if self.storage.repo_blob_size(name, blob) is None]
        missing += [child for child in dict.fromkeys(parsed.manifests)
                    if self.storage.manifest_media_type(name, child) is None]
        if missing:
            raise RegistryError.each("MANIFEST_BLOB_UNKNOWN", [{"digest": digest} for digest in missing])
        # A push by digest may name tags in ?tag= (distribution-spec 1.1.1); each is validated before anything
        # is stored and echoed back in OCI-Tag.
        extra_tags = request.query.get("tag", []) if reference_digest is not None else []
        for extra in extra_tags:
            if not is_tag(extra):
                self._bad_tag(extra)
        references = parsed.blobs + parsed.manifests
        self.storage.put_manifest(name, digest, parsed.media_type, data, tag=tag, references=references,
                                  subject=parsed.subject, descriptor=parsed.descriptor(digest, len(data)))
        for extra in extra_tags:
            self.storage.put_tag(name, extra, digest)
        if self.platform is not None:
            self.platform.pushed(request, grant, name, reference, digest, parsed.media_type, parsed.subject)
        headers = [("Location", f"/v2/{name}/manifests/{digest}"), ("Docker-Content-Digest", digest)]
        if extra_tags:
            headers.append(("OCI-Tag", ", ".join(extra_tags)))
        if parsed.subject is not None:
            headers.append(("OCI-Subject", parsed.subject))
        return _empty(201, *headers)

    @staticmethod
    def _bad_tag(tag: str) -> None:
        raise RegistryError("TAG_INVALID", {"tag": tag}, message="invalid tag")

    async def _delete_manifest(self, request: Request, name: str, reference: str | None) -> Response:
        assert reference is not None
        grant = self._check_delete(request, name)
        tag, digest = check_reference(reference)
        if tag is not None:
            digest = self.storage.resolve_tag(name, tag)
            if not self.storage.delete_tag(name, tag):
                raise RegistryError("MANIFEST_UNKNOWN", {"tag": tag})
        elif digest is not None and not self.storage.delete_manifest(name, digest):
            raise RegistryError("MANIFEST_UNKNOWN", {"digest": digest})
        if self.platform is not None:
            self.platform.deleted(request, grant, name, reference, digest)
        return _empty(202)

    def _check_delete(self, request: Request, name: str) -> Grant | None:
        grant = self._authorize(request, Scope("repository", name, ("delete",)))
        if not self.delete_enabled:
            raise RegistryError("UNSUPPORTED", message="deletes are disabled on this registry")
        return grant

    # -- blobs ----------------------------------------------------------------------------------------------

    async def _get_blob(self, request: Request, name: str, digest: str | None) -> Response:
        assert digest is not None
        self._authorize(request, Scope("repository", name, ("pull",)))
        parse_digest(digest)
        size = self.storage.repo_blob_size(name, digest)
        if size is None:
            raise RegistryError("BLOB_UNKNOWN", {"digest": digest})
        headers = [_API_HEADER, ("Content-Type", "application/octet-stream"), ("Docker-Content-Digest", digest),
                   ("ETag", f'"{digest}"'), ("Accept-Ranges", "bytes")]
        start, length, status = 0, size, 200
        requested = request.header("range")
        if requested:
            match = _RANGE.fullmatch(requested.strip())
            first = match.group(1) if match else ""
            last = match.group(2) if match else ""
            if match is None or (first == "" and last == ""):
                return Response(416, [*headers, ("Content-Range", f"bytes */{size}")])
            if first == "":  # a suffix: the last N bytes
                start = max(size - int(last), 0)
                end = size - 1
            else:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
            if start >= size or end < start:
                return Response(416, [*headers, ("Content-Range", f"bytes */{size}")])
            length, status = end - start + 1, 206
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        try:
            handle = self.storage.open_blob(digest)
        except FileNotFoundError as exc:
            raise RegistryError("BLOB_UNKNOWN", {"digest": digest}) from exc
        return Response(status, headers, file=FileRange(handle, start, length))

    async def _delete_blob(self, request: Request, name: str, digest: str | None) -> Response:
        assert digest is not None
        grant = self._check_delete(request, name)
        parse_digest(digest)
        if not self.storage.unlink_blob(name, digest):
            raise RegistryError("BLOB_UNKNOWN", {"digest": digest})
        if self.platform is not None:
            self.platform.deleted(request, grant, name, "blob", digest)
        return _empty(202)

    # -- uploads --------------------------------------------------------------------------------------------

    async def _receive(self, request: Request, upload: Upload) -> None:
        """Stream the body into the session in batches written by a worker thread, one batch at a time (the
        next batch is read from the socket while the previous one is written)."""
        if upload.busy:
            raise RegistryError("BLOB_UPLOAD_INVALID", {"uuid": upload.id}, status=409,
                                message="another request is writing to this upload")
        body = request.body
        limit = self.max_blob_size
        if limit and body.expected is not None and upload.size + body.expected > limit:
            self._refuse_oversized(upload, upload.size + body.expected)
        loop = asyncio.get_running_loop()
        upload.busy = True
        pending: asyncio.Future[None] | None = None
        try:
            batch: list[bytes] = []
            batched = 0
            received = upload.size
            while (chunk := await body.next_chunk()) is not None:
                received += len(chunk)
                if limit and received > limit:  # chunked transfer encoding: no length up front
                    if pending is not None:
                        await pending
                    self._refuse_oversized(upload, received)
                batch.append(chunk)
                batched += len(chunk)
                if batched >= _WRITE_BATCH:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(None, upload.append_all, batch)
                    batch, batched = [], 0
            if pending is not None:
                await pending
            if batch:
                upload.append_all(batch)  # a small tail: not worth a thread hop
            if self.storage.fsync:
                await loop.run_in_executor(None, upload.sync, True)
            else:
                upload.sync(False)
        finally:
            if pending is not None and not pending.done():
                # Never let a later request (or a cancel) touch the file while a batch is still being written.
                await asyncio.wait([pending])
            upload.busy = False

    def _refuse_oversized(self, upload: Upload, size: int) -> None:
        """An upload past --max-blob-size is dropped whole: the spec's SIZE_INVALID, with 413."""
        self.storage.cancel_upload(upload)
        raise RegistryError("SIZE_INVALID", {"size": size, "limit": self.max_blob_size}, status=413,
                            message="blob exceeds the registry's size limit")

    def _check_range(self, request: Request, name: str, upload: Upload) -> None:
        """A chunk's Content-Range must start where the session ends, and agree with Content-Length."""
        header = request.header("content-range")
        if header is None:
            return
        match = _CONTENT_RANGE.fullmatch(header.strip())
        location = ("Location", f"/v2/{name}/blobs/uploads/{upload.id}")
        if match is None:
            raise RegistryError("BLOB_UPLOAD_INVALID", {"Content-Range": header}, status=416,
                                message="malformed Content-Range", headers=[location, _upload_range(upload)])
        start, end = int(match.group(1)), int(match.group(2))
        expected = request.body.expected
        if start != upload.size or end < start or (expected is not None and expected != end - start + 1):
            raise RegistryError("BLOB_UPLOAD_INVALID", {"Content-Range": header, "size": upload.size},
                                status=416, message="chunk out of order or mismatched with its length",
                                headers=[location, _upload_range(upload), ("Docker-Upload-UUID", upload.id)])

    async def _start_upload(self, request: Request, name: str, _: str | None) -> Response:
        grant = self._authorize(request, Scope("repository", name, ("pull", "push")))
        mount, source = request.param("mount"), request.param("from")
        if mount is not None:
            parse_digest(mount)
            if source and self._allowed(grant, check_name(source), "pull") \
                    and self.storage.repo_blob_size(source, mount) is not None:
                self.storage.link_blob(name, mount)
                return _empty(201, ("Location", f"/v2/{name}/blobs/{mount}"), ("Docker-Content-Digest", mount))
        if self.storage.upload_count() >= self.max_uploads:
            raise RegistryError("TOOMANYREQUESTS", {"open_uploads": self.storage.upload_count()},
                                headers=[("Retry-After", "5")])
        digest = request.param("digest")
        if digest is not None:
            parse_digest(digest)
        upload = self.storage.create_upload(name)
        try:
            await self._receive(request, upload)
        except BaseException:
            self.storage.cancel_upload(upload)
            raise
        if digest is not None:
            self._commit(upload, digest, request)
            return _empty(201, ("Location", f"/v2/{name}/blobs/{digest}"), ("Docker-Content-Digest", digest))
        return _empty(202, ("Location", f"/v2/{name}/blobs/uploads/{upload.id}"), _upload_range(upload),
                      ("Docker-Upload-UUID", upload.id))

    def _commit(self, upload: Upload, digest: str, request: Request) -> None:
        expected = request.body.expected
        if expected is not None and request.body.received != expected:
            self.storage.cancel_upload(upload)
            raise RegistryError("SIZE_INVALID", {"expected": expected, "received": request.body.received})
        self.storage.commit_upload(upload, digest)

    async def _upload_status(self, request: Request, name: str, upload_id: str | None) -> Response:
        assert upload_id is not None
        self._authorize(request, Scope("repository", name, ("pull",)))
        upload = self.storage.get_upload(name, upload_id)
        return _empty(204, ("Location", f"/v2/{name}/blobs/uploads/{upload.id}"), _upload_range(upload),
                      ("Docker-Upload-UUID", upload.id))

    async def _patch_upload(self, request: Request, name: str, upload_id: str | None) -> Response:
        assert upload_id is not None
        self._authorize(request, Scope("repository", name, ("pull", "push")))
        upload = self.storage.get_upload(name, upload_id)
        self._check_range(request, name, upload)
        await self._receive(request, upload)
        return _empty(202, ("Location", f"/v2/{name}/blobs/uploads/{upload.id}"), _upload_range(upload),
                      ("Docker-Upload-UUID", upload.id))

    async def _finish_upload(self, request: Request, name: str, upload_id: str | None) -> Response:
        assert upload_id is not None
        self._authorize(request, Scope("repository", name, ("pull", "push")))
        upload = self.storage.get_upload(name, upload_id)
        digest = request.param("digest")
        if digest is None:
            raise RegistryError("DIGEST_INVALID", message="digest parameter is required")
        parse_digest(digest)
        self._check_range(request, name, upload)
        await self._receive(request, upload)
        self._commit(upload, digest, request)
        return _empty(201, ("Location", f"/v2/{name}/blobs/{digest}"), ("Docker-Content-Digest", digest))

    async def _cancel_upload(self, request: Request, name: str, upload_id: str | None) -> Response:
        assert upload_id is not None
        self._authorize(request, Scope("repository", name, ("pull", "push")))
        self.storage.cancel_upload(self.storage.get_upload(name, upload_id))
        return _empty(204)

    # -- referrers ------------------------------------------------------------------------------------------

    async def _referrers(self, request: Request, name: str, digest: str | None) -> Response:
        assert digest is not None
        self._authorize(request, Scope("repository", name, ("pull",)))
        parse_digest(digest)
        descriptors = self.storage.referrers(name, digest)
        headers = [_API_HEADER, ("Content-Type", OCI_INDEX)]
        artifact_type = request.param("artifactType")
        if artifact_type is not None:
            descriptors = [d for d in descriptors if d.get("artifactType") == artifact_type]
            headers.append(("OCI-Filters-Applied", "artifactType"))
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
        return Response(200, headers, orjson.dumps(index))

    _routes: list[tuple[re.Pattern[str], dict[str, Callable[..., Awaitable[Response]]]]] = [
        (_TAGS, {"GET": _tags}),
        (_MANIFEST, {"GET": _get_manifest, "PUT": _put_manifest, "DELETE": _delete_manifest}),
        (_UPLOAD_START, {"POST": _start_upload}),
        (_UPLOAD, {"GET": _upload_status, "PATCH": _patch_upload, "PUT": _finish_upload,
                   "DELETE": _cancel_upload}),
        (_BLOB, {"GET": _get_blob, "DELETE": _delete_blob}),
        (_REFERRERS, {"GET": _referrers}),
    ]
