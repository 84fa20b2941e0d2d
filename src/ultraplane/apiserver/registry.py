"""The generic registry: one storage-and-REST path for every resource, plus a ``Strategy`` per type.

The REST layer (server.py / app.py) parses a request into a resource, a verb and its options and
calls one ``Registry`` method. The registry does what kube-apiserver's generic ``Store`` does:
object metadata (uid, generateName, creationTimestamp, resourceVersion = store revision,
generation, managedFields), defaults and validation through the strategy, optimistic concurrency
over the storage interface (storage.py), finalizers and deletionTimestamp, list pages with continue
tokens, and watches through the watch cache. Errors are ``ApiError``s carrying kube's ``Status``.

Objects are stored as JSON (kube-apiserver stores protobuf for built-in types; JSON keeps the
stored data readable with etcdctl and shared with CRDs later), with ``metadata.resourceVersion``
removed: the key's mod_revision is the resourceVersion.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag

from ultraplane.apiserver import errors, fieldmanager
from ultraplane.apiserver.encryption import EncryptionConfig, EncryptionConfigError
from ultraplane.apiserver.storage import (
    Backend,
    FutureRevision,
    KeyExists,
    RevisionCompacted,
    RevisionConflict,
)
from ultraplane.apiserver.watchcache import CachedEvent, Subscription, TriggerFunc, WatchCache

log = logging.getLogger("ultraplane.apiserver.registry")

Obj = dict[str, Any]
Cause = dict[str, Any]

CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
    "that were created, modified, or deleted between the time the first chunk was returned and now may show "
    "up in the list."
)
GENERATE_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
BOOKMARK_INTERVAL = 60.0  # kube's cacher: a bookmark a minute, and one 2 s before the watch's deadline
BOOKMARK_BEFORE_DEADLINE = 2.0
IDLE_WATCH_WAIT = 3600.0  # a watch without bookmarks or deadline checks in this rarely
# metadata an applied configuration can own (the rest is the server's or only names the object)
APPLIED_METADATA = ("labels", "annotations", "finalizers", "ownerReferences")
_STATUS_ONLY = frozenset({"status"})
_NOTHING: frozenset[str] = frozenset()


@dataclass
class Column:
    name: str
    type: str = "string"
    format: str = ""
    description: str = ""
    priority: int = 0

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "format": self.format, "description": self.description,
                "priority": self.priority}


def _no_defaults(obj: Obj) -> None:
    return None


def _no_causes(obj: Obj, old: Obj | None) -> list[Cause]:
    return []


def _no_fields(obj: Obj) -> dict[str, str]:
    return {}


@dataclass
class Strategy:
    """Everything type-specific about one resource. Adding a resource = adding one of these."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool = True
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    storage: str = ""  # the key segment under /registry/ (kube's, e.g. "minions" for nodes)
    subresources: tuple[str, ...] = ()  # "status", "scale", "binding"
    generation: bool = False  # metadata.generation tracks spec changes
    verbs: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
    defaults: Callable[[Obj], None] = _no_defaults
    validate: Callable[[Obj, Obj | None], list[Cause]] = _no_causes
    prepare_create: Callable[[Obj], None] = _no_defaults  # e.g. reset status
    fields: Callable[[Obj], dict[str, str]] = _no_fields  # type-specific field-selector fields
    # a field of `fields` the watch cache indexes watchers by when their selector pins it (kube's
    # trigger function; pods: spec.nodeName, so a kubelet's watch only sees its node's pods)
    trigger_field: str = ""
    columns: list[Column] = field(default_factory=list)
    row: Callable[[Obj, dt.datetime], list[Any]] | None = None
    name_rule: str = "dns1123subdomain"
    scale_path: tuple[str, str, str] = ("spec.replicas", "status.replicas", "spec.selector")
    allow_create_on_update: bool = False
    return_deleted_object: bool = False  # DELETE answers with the object, not a Success Status (pods, services)
    # virtual create-only resources (access reviews): (request body, user) -> response, nothing stored
    create_handler: Callable[[Obj, Any], Obj | Awaitable[Obj]] | None = None  # async for TokenReview
    # another version of a stored kind (events.k8s.io/v1 Event is stored as core/v1 Event)
    from_storage: Callable[[Obj], Obj] | None = None
    to_storage: Callable[[Obj], Obj] | None = None
    # graceful deletion (pods): (object, DeleteOptions) -> grace seconds; > 0 marks the object and keeps it
    grace_period: Callable[[Obj, Obj], int] | None = None
    # first DELETE of an object without deletionTimestamp (CRDs add their cleanup finalizer here)
    prepare_delete: Callable[[Obj], None] | None = None
    # custom resources: unstructured JSON with their own schema (no strategic merge patch, list items
    # keep apiVersion/kind, unknown fields found by the CRD's structural schema)
    custom: bool = False
    schema: dict[str, Any] | None = None
    find_unknown: Callable[[Obj], list[str]] | None = None

    def __post_init__(self) -> None:
        if not self.storage:
            self.storage = self.plural
        self.api_version = f"{self.group}/{self.version}" if self.group else self.version
        self.list_kind = self.kind + "List"
        self.prefix = f"/registry/{self.storage}/".encode()
        self.group_resource = errors.qualified(self.group, self.plural)

    def key(self, namespace: str, name: str) -> bytes:
        if self.namespaced:
            return f"/registry/{self.storage}/{namespace}/{name}".encode()
        return f"/registry/{self.storage}/{name}".encode()

    def collection_prefix(self, namespace: str) -> bytes:
        if self.namespaced and namespace:
            return f"/registry/{self.storage}/{namespace}/".encode()
        return self.prefix

    def has_status(self) -> bool:
        return "status" in self.subresources


# ============================================================================ helpers
_rfc3339_cache: list[Any] = [0, ""]  # (whole second, its text): every write stamps managedFields with it


def now_rfc3339() -> str:
    second = int(time.time())
    if _rfc3339_cache[0] != second:
        _rfc3339_cache[0] = second
        _rfc3339_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
    return _rfc3339_cache[1]


def decode(raw: bytes, revision: int) -> Obj:
    obj = orjson.loads(raw)
    obj["metadata"]["resourceVersion"] = str(revision)
    return obj


def encode_for_storage(obj: Obj) -> bytes:
    meta = obj["metadata"]
    rv = meta.pop("resourceVersion", None)
    try:
        return orjson.dumps(obj)
    finally:
        if rv is not None:
            meta["resourceVersion"] = rv


def spec_of(obj: Obj) -> dict[str, Any]:
    """Everything but metadata and status: what a generation bump tracks."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def get_path(obj: Obj, path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def set_path(obj: Obj, path: str, value: Any) -> None:
    parts = path.split(".")
    cur = obj
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def next_bookmark_time(now: float, deadline: float | None) -> float | None:
    """kube's cacheWatcher.nextBookmarkTime: a minute from now, or just before the deadline when that is
    sooner; none once that moment has passed."""
    at = now + BOOKMARK_INTERVAL
    if deadline is None:
        return at
    at = min(at, deadline - BOOKMARK_BEFORE_DEADLINE)
    # strictly later: the loop's clock ticks in milliseconds here, and "now" again must not repeat it
    return at if at > now else None


def default_manager(user_agent: str) -> str:
    """kube's default field manager: the user agent's program name (``kubectl-client-side-apply`` etc.)."""
    return (user_agent.split("/", 1)[0] or "unknown")[:128]


def encode_continue(revision: int, start: str) -> str:
    token = orjson.dumps({"v": "meta.k8s.io/v1", "rv": revision, "start": start})
    return base64.b64encode(token).decode()


def decode_continue(token: str) -> tuple[int, str]:
    try:
        data = orjson.loads(base64.b64decode(token + "=" * (-len(token) % 4)))
        if data.get("v") != "meta.k8s.io/v1" or "rv" not in data or "start" not in data:
            raise ValueError
        return int(data["rv"]), str(data["start"])
    except Exception as exc:
        raise errors.bad_request("continue key is not valid: incorrect encoded start resourceVersion "
                                 "(version meta.k8s.io/v1)") from exc


@dataclass
class ListOptions:
    label_selector: str = ""
    field_selector: str = ""
    limit: int = 0
    continue_token: str = ""
    resource_version: str = ""
    resource_version_match: str = ""
    send_initial_events: bool | None = None  # watch-list (sendInitialEvents); None when not asked

    @classmethod
    def from_query(cls, q: dict[str, str]) -> ListOptions:
        try:
            limit = int(q.get("limit") or 0)
        except ValueError as exc:
            raise errors.bad_request(f"invalid limit {q.get('limit')!r}") from exc
        send = q.get("sendInitialEvents")
        opts = cls(q.get("labelSelector", ""), q.get("fieldSelector", ""), max(limit, 0), q.get("continue", ""),
                   q.get("resourceVersion", ""), q.get("resourceVersionMatch", ""),
                   None if send is None else send.lower() in ("true", "1", "t"))
        causes = list_option_causes(opts, q.get("watch", "") in ("true", "1"))
        if causes:
            raise errors.invalid("ListOptions", "meta.k8s.io", "", causes)
        return opts


def list_option_causes(opts: ListOptions, watch: bool) -> list[Cause]:
    """kube's ValidateListOptions (WatchList enabled, as in 1.32)."""
    match = opts.resource_version_match
    causes: list[Cause] = []

    def forbidden(field_name: str, detail: str) -> None:
        causes.append({"reason": "FieldValueForbidden", "message": f"Forbidden: {detail}", "field": field_name})

    if watch:
        if opts.send_initial_events is not None and match != "NotOlderThan":
            forbidden("resourceVersionMatch", "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
        if match:
            if opts.send_initial_events is None:
                forbidden("resourceVersionMatch",
                          "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided")
            if match != "NotOlderThan":
                causes.append({"reason": "FieldValueNotSupported", "field": "resourceVersionMatch",
                               "message": f'Unsupported value: "{match}": supported values: "NotOlderThan"'})
            if opts.continue_token:
                forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided")
        return causes
    if match:
        if not opts.resource_version:
            forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden unless resourceVersion is provided")
        if opts.continue_token:
            forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided")
        if match not in ("Exact", "NotOlderThan"):
            causes.append({"reason": "FieldValueNotSupported", "field": "resourceVersionMatch",
                           "message": f'Unsupported value: "{match}": supported values: "Exact", "NotOlderThan", '
                                      f'""'})
        if match == "Exact" and opts.resource_version == "0":
            forbidden("resourceVersionMatch", 'resourceVersionMatch "exact" is forbidden for resourceVersion "0"')
    if opts.send_initial_events is not None:
        forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list")
    return causes


class Filter:
    """A compiled label + field selector for one strategy (None parts match everything)."""

    def __init__(self, strategy: Strategy, label_selector: str, field_selector: str) -> None:
        self.strategy = strategy
        self.labels = None
        self.fields = None
        if label_selector:
            from ultraplane.apiserver import selectors

            try:
                sel = selectors.parse_label_selector(label_selector)
            except selectors.SelectorError as exc:
                raise errors.bad_request(str(exc)) from exc
            self.labels = None if sel.empty else sel
        if field_selector:
            from ultraplane.apiserver import selectors

            try:
                fsel = selectors.parse_field_selector(field_selector)
            except selectors.SelectorError as exc:
                raise errors.bad_request(str(exc)) from exc
            sample = self.field_set({"metadata": {}})
            for fname, _op, _value in fsel.requirements:
                if fname not in sample:
                    raise errors.bad_request(f'field label not supported: {fname}')
            self.fields = fsel if fsel.requirements else None

    @property
    def empty(self) -> bool:
        return self.labels is None and self.fields is None

    def field_set(self, obj: Obj) -> dict[str, str]:
        meta = obj.get("metadata", {})
        out = {"metadata.name": meta.get("name", "")}
        if self.strategy.namespaced:
            out["metadata.namespace"] = meta.get("namespace", "")
        out.update(self.strategy.fields(obj))
        return out

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.labels is not None and not self.labels.matches(obj.get("metadata", {}).get("labels") or {}):
            return False
        if self.fields is not None and not self.fields.matches(self.field_set(obj)):
            return False
        return True

    def matches_event(self, ev: CachedEvent, previous: bool) -> bool:
        """matches() on a watch event's object (or its previous state); the field set is computed once
        per event and shared by every watcher of the same resource."""
        obj = event_object(ev, self.strategy, previous)
        if obj is None:
            return False
        if self.labels is not None and not self.labels.matches(obj.get("metadata", {}).get("labels") or {}):
            return False
        if self.fields is not None:
            memo_key = ("fields", id(self.strategy), previous)
            fields = ev.memo.get(memo_key)
            if fields is None:
                fields = ev.memo[memo_key] = self.field_set(obj)
            if not self.fields.matches(fields):
                return False
        return True

    def pinned_fields(self) -> dict[str, str]:
        """field -> value of the field selector's equality requirements (``f=v``, ``f==v``)."""
        if self.fields is None:
            return {}
        return {name: value for name, op, value in self.fields.requirements if op == "="}


def event_object(ev: CachedEvent, s: Strategy, previous: bool = False) -> Obj | None:
    """A watch event's object (or its previous state) as s serves it, converted once per event."""
    obj = ev.prev() if previous else ev.obj()
    if obj is None or s.from_storage is None:
        return obj
    memo_key = ("view", id(s), previous)
    view = ev.memo.get(memo_key)
    if view is None:
        view = ev.memo[memo_key] = s.from_storage(copy.deepcopy(obj))
    return view


# id(schema node) -> (node, (properties, additionalProperties, items)) or (node, None) where nothing is checked
_SCHEMA_SHAPES: dict[int, tuple[Any, tuple[Any, Any, Any] | None]] = {}


def _shape(schema: Any) -> tuple[Any, Any, Any] | None:
    hit = _SCHEMA_SHAPES.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    node = schema
    shape: tuple[Any, Any, Any] | None = None
    while isinstance(node, dict) and not node.get("x-kubernetes-preserve-unknown-fields"):
        if "allOf" in node and "properties" not in node:
            parts = [p for p in node["allOf"] if isinstance(p, dict)]
            if len(parts) != 1:
                break
            node = parts[0]
            continue
        items = node.get("items")
        shape = (node.get("properties"), node.get("additionalProperties"), items if isinstance(items, dict) else None)
        break
    _SCHEMA_SHAPES[id(schema)] = (schema, shape)
    return shape


def _has_unknown(value: Any, schema: Any) -> bool:
    """unknown_fields(value, schema) != [], without building paths: every write checks the whole object."""
    shape = _shape(schema)
    if shape is None:
        return False
    props, extra, items = shape
    if type(value) is dict:
        if props is None and extra is None:
            return False
        for key, item in value.items():
            if props is not None:
                sub = props.get(key, _has_unknown)  # the function itself as the "absent" marker
                if sub is not _has_unknown:
                    if (type(item) is dict or type(item) is list) and _has_unknown(item, sub):
                        return True
                    continue
            if isinstance(extra, dict):
                if (type(item) is dict or type(item) is list) and _has_unknown(item, extra):
                    return True
            elif not (extra is True or props is None):
                return True
    elif type(value) is list and items is not None:
        for item in value:
            if (type(item) is dict or type(item) is list) and _has_unknown(item, items):
                return True
    return False


def unknown_fields(value: Any, schema: dict[str, Any] | None, path: str = "") -> list[str]:
    """Paths of fields the schema does not declare (kube's strict decoding), e.g. ``spec.containers[0].foo``."""
    if not path and not _has_unknown(value, schema):
        return []
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if "allOf" in schema and "properties" not in schema:
        # OpenAPI v3 wraps references as allOf: [ {...} ]
        parts = [p for p in schema["allOf"] if isinstance(p, dict)]
        if len(parts) == 1:
            return unknown_fields(value, parts[0], path)
        return []
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and extra is None:
            return []
        for key, item in value.items():
            sub = f"{path}.{key}" if path else key
            if props is not None and key in props:
                out += unknown_fields(item, props[key], sub)
            elif isinstance(extra, dict):
                out += unknown_fields(item, extra, sub)
            elif extra is True or (props is None):
                continue
            else:
                out.append(sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return out


def typed_path(obj: Obj, path: str) -> str:
    """structured-merge-diff's spelling of a field path: ``.spec.containers[name="c"].foo`` (list items by
    their name key where they have one, else by index)."""
    import re

    out = []
    node: Any = obj
    for m in re.finditer(r"([^.\[\]]+)|\[(\d+)\]", path):
        key, index = m.group(1), m.group(2)
        if index is None:
            out.append(f".{key}")
            node = node.get(key) if isinstance(node, dict) else None
            continue
        item = node[int(index)] if isinstance(node, list) and int(index) < len(node) else None
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            out.append(f'[name="{item["name"]}"]')
        else:
            out.append(f"[{index}]")
        node = item
    return "".join(out)


@dataclass
class WriteOptions:
    dry_run: bool = False
    field_manager: str = ""
    user_agent: str = ""
    field_validation: str = "Warn"
    warnings: list[str] = field(default_factory=list)
    # strict decoding errors found while decoding the body (duplicate fields), reported per fieldValidation
    strict_errors: list[str] = field(default_factory=list)

    def warn(self, texts: list[str]) -> None:
        for text in texts:  # a retried update must not repeat its warnings
            if text not in self.warnings:
                self.warnings.append(text)

    @classmethod
    def from_query(cls, q: dict[str, str], user_agent: str = "") -> WriteOptions:
        dry = q.get("dryRun", "")
        if dry and dry != "All":
            raise errors.bad_request(f'dryRun: Unsupported value: "{dry}": supported values: "All"')
        validation = q.get("fieldValidation", "") or "Warn"
        if validation not in ("Strict", "Warn", "Ignore"):
            raise errors.bad_request(f'fieldValidation: Unsupported value: "{validation}": supported values: '
                                     f'"Ignore", "Strict", "Warn"')
        return cls(dry == "All", q.get("fieldManager", ""), user_agent, validation)

    def manager(self) -> str:
        return self.field_manager or default_manager(self.user_agent)


# ============================================================================ registry
class Registry:
    """Generic CRUD + watch over a Backend for every registered Strategy."""

    def __init__(self, backend: Backend, overrides: dict[str, Backend] | None = None, *,
                 compaction_interval: float = 300.0) -> None:
        self.backend = backend
        self.compaction_interval = compaction_interval
        self.overrides = overrides or {}  # "group/resource" -> backend (etcd-servers-overrides)
        self.caches: dict[int, WatchCache] = {}
        self.strategies: dict[tuple[str, str, str], Strategy] = {}  # (group, version, plural)
        # async mutating admission per resource plural, run before defaults on create (e.g. ClusterIPs); it
        # may return an undo (releasing what it allocated) that runs when the create then fails or is a dry run
        self.admission: dict[str, Callable[[Obj], Any]] = {}
        # per resource plural, run on updates after prepare_update (new, current): returns None or an object with
        # async undo() (the write failed or changed nothing) and finish() (it was stored), e.g. NodePorts
        self.update_admission: dict[str, Callable[[Obj, Obj], Awaitable[Any]]] = {}
        # validating admission on every write (kube's NodeRestriction, noderestriction.py): called with (operation
        # CREATE|UPDATE|DELETE, strategy, namespace, name, subresource, new object, old object); raises an
        # ApiError to refuse, or returns an awaitable for a check that reads other objects, else None
        self.write_admission: list[Callable[[str, Strategy, str, str, str, Obj | None, Obj | None],
                                            Awaitable[None] | None]] = []
        # per resource plural, run after an object is deleted from the store (e.g. releasing its ClusterIP)
        self.on_deleted: dict[str, Callable[[Obj], Awaitable[None]]] = {}
        self._ns_tasks: set[asyncio.Task[None]] = set()
        self.encryption: EncryptionConfig | None = None  # encryption at rest (--encryption-provider-config)
        # Empty Terminating namespaces in-process (what kube leaves to the controller manager's namespace
        # controller); `up` turns it off when it runs `ultraplane controllers`, whose controller does it.
        self.namespace_cleanup = True

    def decode(self, s: Strategy, raw: bytes, revision: int, key: bytes = b"") -> Obj:
        return self._decode_plain(s, self.plaintext(s, raw, key), revision)

    def plaintext(self, s: Strategy, raw: bytes, key: bytes) -> bytes:
        if self.encryption is not None and raw.startswith(b"k8s:enc:"):
            return self.decrypt(s, key, raw)
        return raw

    @staticmethod
    def _decode_plain(s: Strategy, plain: bytes, revision: int) -> Obj:
        obj = decode(plain, revision)
        return s.from_storage(obj) if s.from_storage is not None else obj

    def encode(self, s: Strategy, obj: Obj, key: bytes = b"") -> bytes:
        raw = encode_for_storage(s.to_storage(obj) if s.to_storage is not None else obj)
        if self.encryption is not None:
            providers = self.encryption.providers_for(s.group_resource)
            if providers is not None:
                return providers.encrypt(key, raw)
        return raw

    def decrypt(self, s: Strategy, key: bytes, raw: bytes) -> bytes:
        """A stored value through the resource's providers (kube's 500 when none can read it)."""
        providers = self.encryption.providers_for(s.group_resource) if self.encryption is not None else None
        try:
            if providers is None:
                raise EncryptionConfigError("no matching prefix found")
            return providers.decrypt(key, raw)
        except (EncryptionConfigError, InvalidTag) as exc:
            why = str(exc) or "cipher: message authentication failed"
            raise errors.ApiError(errors.status(500, "InternalError", f"Internal error occurred: unable to "
                                                f"transform key \"{key.decode(errors='replace')}\": {why}")) from exc

    def decrypt_watched(self, key: bytes, raw: bytes) -> bytes:
        """For the watch cache: an encrypted value, read with the providers of the resource owning key."""
        for s in self.strategies.values():
            if key.startswith(s.prefix) and self.encryption is not None \
                    and self.encryption.providers_for(s.group_resource) is not None:
                return self.decrypt(s, key, raw)
        raise EncryptionConfigError("no matching prefix found")

    def register(self, strategy: Strategy) -> None:
        self.strategies[(strategy.group, strategy.version, strategy.plural)] = strategy

    def backend_for(self, strategy: Strategy) -> Backend:
        return self.overrides.get(f"{strategy.group}/{strategy.plural}", self.backend)

    def cache_for(self, strategy: Strategy) -> WatchCache:
        return self.caches[id(self.backend_for(strategy))]

    async def start(self) -> None:
        for backend in {id(b): b for b in [self.backend, *self.overrides.values()]}.values():
            await backend.start()
            cache = WatchCache(backend)
            if self.encryption is not None:
                cache.decrypt = self.decrypt_watched
            await cache.start()
            self.caches[id(backend)] = cache
            if self.compaction_interval > 0:
                task = asyncio.get_running_loop().create_task(self.compact_periodically(backend, cache))
                self._ns_tasks.add(task)

    async def compact_periodically(self, backend: Backend, cache: WatchCache) -> None:
        """kube-apiserver's compactor: each interval, compact at the revision seen one interval earlier."""
        previous = 0
        while True:
            await asyncio.sleep(self.compaction_interval)
            try:
                current = await backend.current_revision()
                if previous:
                    await backend.compact(previous)
                    cache.compacted(previous)
                previous = current
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # an already-compacted revision (another API server got there first) is fine
                log.debug("compaction at %d: %s", previous, exc)
                previous = current

    async def close(self) -> None:
        for task in list(self._ns_tasks):
            task.cancel()
        for cache in self.caches.values():
            await cache.close()
        for backend in {id(b): b for b in [self.backend, *self.overrides.values()]}.values():
            await backend.close()

    # ------------------------------------------------------------------ reads
    async def read(self, s: Strategy, namespace: str, name: str) -> tuple[Obj, int]:
        _, stored = await self.backend_for(s).get(s.key(namespace, name))
        if stored is None:
            raise errors.not_found(s.group, s.plural, name)
        return self.decode(s, stored.value, stored.mod_revision, stored.key), stored.mod_revision

    async def read_twice(self, s: Strategy, namespace: str, name: str) -> tuple[Obj, Obj, int]:
        """Two independent decodings of the stored object: the current state and a copy to mutate. Decoding
        the bytes again is several times cheaper than deep-copying the decoded object."""
        _, stored = await self.backend_for(s).get(s.key(namespace, name))
        if stored is None:
            raise errors.not_found(s.group, s.plural, name)
        plain, rev = self.plaintext(s, stored.value, stored.key), stored.mod_revision
        return self._decode_plain(s, plain, rev), self._decode_plain(s, plain, rev), rev

    async def get(self, s: Strategy, namespace: str, name: str) -> Obj:
        return (await self.read(s, namespace, name))[0]

    async def list(self, s: Strategy, namespace: str, opts: ListOptions) -> Obj:
        flt = Filter(s, opts.label_selector, opts.field_selector)
        backend = self.backend_for(s)
        prefix = s.collection_prefix(namespace)
        revision = 0
        start = b""
        if opts.continue_token:
            revision, start_text = decode_continue(opts.continue_token)
            start = s.prefix + start_text.encode()
        elif opts.resource_version and opts.resource_version_match == "Exact":
            try:
                revision = int(opts.resource_version)
            except ValueError as exc:
                raise errors.bad_request(f"invalid resource version: {opts.resource_version}") from exc
        items: list[Obj] = []
        more = False
        remaining = 0
        next_start = b""
        served_at = 0
        while True:
            try:
                page = await backend.list(prefix, start=start, limit=(opts.limit + 1) if opts.limit else 0,
                                          revision=revision)
            except RevisionCompacted as exc:
                if opts.continue_token:
                    raise errors.expired(CONTINUE_EXPIRED) from exc
                raise errors.expired(f"too old resource version: {revision} ({exc.compact_revision})") from exc
            except FutureRevision as exc:
                raise errors.ApiError(errors.status(
                    504, "Timeout", f"Too large resource version: {revision}, current: "
                    f"{await backend.current_revision()}", {"causes": [{"reason": "ResourceVersionTooLarge",
                                                                         "message": "Too large resource version"}],
                                                           "retryAfterSeconds": 1})) from exc
            served_at = revision or page.revision
            revision = served_at
            batch = page.items
            has_more = page.more or (opts.limit and len(batch) > opts.limit)
            for sv in batch:
                if opts.limit and len(items) == opts.limit:
                    has_more = True
                    break
                obj = self.decode(s, sv.value, sv.mod_revision, sv.key)
                if flt.empty or flt.matches(obj):
                    items.append(obj)
                next_start = sv.key + b"\0"
            if not opts.limit or not has_more or len(items) >= opts.limit:
                more = bool(opts.limit and has_more)
                if more and flt.empty:
                    remaining = page.count - len(batch[: opts.limit])
                break
            start = next_start
        if not s.custom:
            for obj in items:
                obj.pop("kind", None)
                obj.pop("apiVersion", None)
        meta: dict[str, Any] = {"resourceVersion": str(served_at)}
        if more:
            meta["continue"] = encode_continue(served_at, next_start[len(s.prefix):].decode())
            if remaining > 0:
                meta["remainingItemCount"] = remaining
        return {"kind": s.list_kind, "apiVersion": s.api_version, "metadata": meta, "items": items}

    # ------------------------------------------------------------------ create
    def admit_write(self, op: str, s: Strategy, namespace: str, name: str, subresource: str, new: Obj | None,
                    old: Obj | None) -> Awaitable[None] | None:
        """Runs the write_admission checks; an awaitable when one must read other objects (callers await it),
        so a write by anyone else costs no coroutine."""
        pending = [p for check in self.write_admission
                   if (p := check(op, s, namespace, name, subresource, new, old)) is not None]
        return asyncio.gather(*pending) if pending else None  # type: ignore[return-value]

    async def namespace_must_exist(self, s: Strategy, namespace: str, name: str) -> None:
        if not s.namespaced:
            return
        ns = self.strategies.get(("", "v1", "namespaces"))
        if ns is None:
            return
        _, stored = await self.backend_for(ns).get(ns.key("", namespace))
        if stored is None:
            raise errors.not_found("", "namespaces", namespace)
        obj = orjson.loads(stored.value)
        if obj.get("metadata", {}).get("deletionTimestamp"):
            raise errors.forbidden(f"{s.plural} \"{name}\" is forbidden: unable to create new content "
                                   f"in namespace {namespace} because it is being terminated",
                                   s.group, s.plural)

    def check_type(self, s: Strategy, obj: Obj) -> None:
        if not isinstance(obj, dict):
            raise errors.bad_request("the body of the request was in an unknown format")
        api_version = obj.get("apiVersion")
        kind = obj.get("kind")
        if api_version and api_version != s.api_version:
            raise errors.bad_request(f"the API version in the data ({api_version}) does not match the expected "
                                     f"API version ({s.api_version})")
        if kind and kind != s.kind:
            raise errors.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({s.kind})")
        obj["apiVersion"] = s.api_version
        obj["kind"] = s.kind
        if not isinstance(obj.get("metadata"), dict):
            obj["metadata"] = {}

    def validate(self, s: Strategy, obj: Obj, old: Obj | None) -> None:
        causes: list[Cause] = []
        try:
            from ultraplane.apiserver import validation

            meta = dict(obj["metadata"])
            if old is not None:
                meta.pop("generateName", None)
            causes.extend(validation.validate_object_meta(meta, namespaced=s.namespaced, name_rule=s.name_rule))
        except ImportError:
            if not obj["metadata"].get("name"):
                causes.append({"reason": "FieldValueRequired", "message": "Required value: name or generateName is "
                               "required", "field": "metadata.name"})
        causes.extend(s.validate(obj, old))
        if causes:
            raise errors.invalid(s.kind, s.group, obj["metadata"].get("name", ""), causes)

    def check_fields(self, s: Strategy, obj: Obj, wo: WriteOptions) -> None:
        """fieldValidation on create/update: Strict refuses undeclared and duplicate fields (400), Warn reports
        them, Ignore is silent. Undeclared fields are dropped in every mode (kube decodes into typed objects)."""
        texts = self.strict_errors(s, obj, wo.strict_errors)
        if not texts or wo.field_validation == "Ignore":
            return
        if wo.field_validation == "Strict":
            raise errors.bad_request(f'{s.kind} in version "{s.version}" cannot be handled as a {s.kind}: '
                                     f'strict decoding error: {", ".join(texts)}')
        wo.warn(texts)

    def undeclared_fields(self, s: Strategy, obj: Obj) -> list[str]:
        schema = self.schema_for(s)
        if schema is None:
            return []
        return s.find_unknown(obj) if s.find_unknown is not None else unknown_fields(obj, schema)

    def strict_errors(self, s: Strategy, obj: Obj, found: list[str]) -> list[str]:
        """``found`` (decoding errors) plus ``unknown field "<path>"`` for each undeclared field, now removed."""
        from ultraplane.apiserver.strictdecode import drop_field

        unknown = self.undeclared_fields(s, obj)
        for path in unknown:
            drop_field(obj, path)
        return [*found, *(f'unknown field "{u}"' for u in unknown)]

    async def create(self, s: Strategy, namespace: str, obj: Obj, wo: WriteOptions, *,
                     operation: str = "Update", applied: Obj | None = None) -> Obj:
        self.check_type(s, obj)
        self.check_fields(s, obj, wo)
        meta = obj["metadata"]
        if s.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and body_ns != namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent "
                                         "on the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(secrets.choice(GENERATE_NAME_CHARS) for _ in range(5))
        await self.namespace_must_exist(s, namespace, meta.get("name", ""))
        admitting = self.admit_write("CREATE", s, namespace, meta.get("name", ""), "", obj, None)
        if admitting is not None:
            await admitting
        for transient in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(transient, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if s.generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        # kube records the creator's fields on the decoded (defaulted) object, before the registry and
        # admission change it: allocated ClusterIPs, a reset status or an admitted priority belong to nobody
        schema = self.schema_for(s)
        if applied is not None:
            fieldmanager.record_apply_create(obj, applied, schema, wo.manager(), s.api_version,
                                             self.reset_fields(s, obj, obj, ""))
        elif s.plural in self.admission:
            # our strategies' defaults also fill what kube's admission plugins set (a pod's priority, its
            # service account): default a copy for the creator's fields, so admission still sees what the
            # client sent (Priority refuses a priority the client gave, not one defaulting gave)
            defaulted = orjson.loads(orjson.dumps(obj))
            s.defaults(defaulted)
            fieldmanager.record_update(defaulted, None, schema, wo.manager(), s.api_version, "",
                                       self.reset_fields(s, defaulted, defaulted, ""))
            meta["managedFields"] = defaulted["metadata"].get("managedFields")
        else:
            s.defaults(obj)
            fieldmanager.record_update(obj, None, schema, wo.manager(), s.api_version, "",
                                       self.reset_fields(s, obj, obj, ""))
        s.prepare_create(obj)
        admit = self.admission.get(s.plural)
        undo = await admit(obj) if admit is not None else None
        try:
            s.defaults(obj)
            self.validate(s, obj, None)
            if wo.dry_run:
                if undo is not None:
                    await undo()
                return obj
            try:
                key = s.key(namespace, meta["name"])
                revision = await self.backend_for(s).create(key, self.encode(s, obj, key))
            except KeyExists as exc:
                raise errors.already_exists(s.group, s.plural, meta["name"]) from exc
        except BaseException:
            if undo is not None and not wo.dry_run:
                await undo()
            raise
        meta["resourceVersion"] = str(revision)
        return obj

    # ------------------------------------------------------------------ update
    async def update(self, s: Strategy, namespace: str, name: str, obj: Obj, wo: WriteOptions, *,
                     subresource: str = "") -> tuple[Obj, bool]:
        """PUT. Returns (object, created)."""
        self.check_type(s, obj)
        self.check_fields(s, obj, wo)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL "
                                     f"({name})")
        if s.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.bad_request("the namespace of the provided object does not match the namespace sent on "
                                     "the request")
        expected_rv = meta.get("resourceVersion") or ""

        def mutate(current: Obj) -> Obj:
            return obj

        try:
            return await self.guaranteed_update(s, namespace, name, mutate, wo, subresource=subresource,
                                                precondition_rv=expected_rv), False
        except errors.ApiError as exc:
            if exc.code != 404 or not s.allow_create_on_update or subresource:
                raise
        meta["name"] = name
        return await self.create(s, namespace, obj, wo), True

    async def guaranteed_update(self, s: Strategy, namespace: str, name: str, mutate: Callable[[Obj], Obj],
                                wo: WriteOptions, *, subresource: str = "", precondition_rv: str = "",
                                operation: str = "Update", writes_status: bool = False) -> Obj:
        backend = self.backend_for(s)
        key = s.key(namespace, name)
        for _attempt in range(32):
            current, fresh, mod_rev = await self.read_twice(s, namespace, name)
            new = mutate(fresh)
            self.check_type(s, new)
            rv = precondition_rv or str(new["metadata"].get("resourceVersion") or "")
            if rv and rv != str(mod_rev):
                raise errors.conflict(s.group, s.plural, name, errors.MODIFIED)
            # admission sees the object as submitted, before the strategy resets what a subresource cannot change
            admitting = self.admit_write("UPDATE", s, namespace, name, subresource, new, current)
            if admitting is not None:
                await admitting
            new = self.prepare_update(s, new, current, subresource, writes_status)
            if operation != "Apply":  # an apply's fields were settled on the merged object (self.apply)
                fieldmanager.record_update(new, current, self.schema_for(s), wo.manager(), s.api_version,
                                           subresource, self.reset_fields(s, new, current, subresource))
            hook = self.update_admission.get(s.plural) if not subresource else None
            change = await hook(new, current) if hook is not None else None
            try:
                outcome = await self.store_update(s, backend, key, new, current, mod_rev, wo)
            except BaseException:
                if change is not None:
                    await change.undo()
                raise
            if change is not None:  # keep the new allocations and free the old ones only once stored
                await (change.finish() if outcome is not None and outcome[1] else change.undo())
            if outcome is None:
                # Someone wrote in between: mutate the fresh object again (kube's GuaranteedUpdate). A
                # caller-supplied resourceVersion no longer matches then, and the check above refuses it.
                continue
            new, written = outcome
            if not written:
                return new
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers") and not (
                    s.plural == "namespaces" and (new.get("spec") or {}).get("finalizers")):
                # the last finalizer is gone (for a namespace also spec.finalizers): the object goes away now
                await self.remove(s, namespace, name, int(new["metadata"]["resourceVersion"]))
                deleted_hook = self.on_deleted.get(s.plural)
                if deleted_hook is not None:
                    await deleted_hook(new)
            return new
        raise errors.conflict(s.group, s.plural, name, errors.MODIFIED)

    async def store_update(self, s: Strategy, backend: Backend, key: bytes, new: Obj, current: Obj, mod_rev: int,
                           wo: WriteOptions) -> tuple[Obj, bool] | None:
        """Validate and write one attempt: (object, written), or None when another write won the race."""
        self.validate(s, new, current)
        if self.unchanged(new, current):
            return current, False
        if wo.dry_run:
            return new, False
        try:
            revision = await backend.update(key, self.encode(s, new, key), mod_rev)
        except RevisionConflict as exc:
            if exc.current is None:
                raise errors.not_found(s.group, s.plural, new["metadata"]["name"]) from exc
            return None
        new["metadata"]["resourceVersion"] = str(revision)
        return new, True

    @staticmethod
    def unchanged(new: Obj, current: Obj) -> bool:
        """Nothing to store: managedFields included (their times move only when fields change)."""
        return new == current

    @staticmethod
    def reset_fields(s: Strategy, new: Obj, current: Obj, subresource: str) -> frozenset[str]:
        """Top-level fields a write through this endpoint cannot set, so no manager owns them there
        (kube's GetResetFields): status on the main resource, all but metadata and status on /status."""
        if subresource == "status":
            return frozenset(k for k in (*new, *current) if k not in ("metadata", "status"))
        return _STATUS_ONLY if s.has_status() else _NOTHING

    def prepare_update(self, s: Strategy, new: Obj, current: Obj, subresource: str,
                       writes_status: bool = False) -> Obj:
        """`writes_status`: a server-side change of spec and status in one write (pods/binding, which
        kube-apiserver writes to storage directly), so status is not reset to the stored one."""
        meta = new["metadata"]
        cur_meta = current["metadata"]
        if subresource == "status":
            # only status changes through /status (plus nothing else kube lets through)
            # current is not used after this write, so the merged object may share its spec
            merged = {**current, "metadata": dict(cur_meta)}
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            merged["metadata"]["managedFields"] = meta.get("managedFields", cur_meta.get("managedFields"))
            return merged
        for immutable in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                          "namespace", "name"):
            if immutable in cur_meta:
                meta[immutable] = cur_meta[immutable]
            else:
                meta.pop(immutable, None)
        meta["resourceVersion"] = cur_meta.get("resourceVersion")
        if "managedFields" not in meta and "managedFields" in cur_meta:
            meta["managedFields"] = cur_meta["managedFields"]
        if s.has_status() and not writes_status:
            if "status" in current:
                new["status"] = current["status"]
            else:
                new.pop("status", None)
        s.defaults(new)
        if s.generation:
            generation = int(cur_meta.get("generation") or 1)
            # a custom resource without a status subresource counts status changes too, as kube does
            if spec_of(new) != spec_of(current) or (
                    s.custom and not s.has_status() and new.get("status") != current.get("status")):
                generation += 1
            meta["generation"] = generation
        else:
            meta.pop("generation", None)
        return new

    # ------------------------------------------------------------------ patch
    async def patch(self, s: Strategy, namespace: str, name: str, content_type: str, body: bytes,
                    wo: WriteOptions, *, subresource: str = "", force: bool = False) -> tuple[Obj, bool]:
        from ultraplane.apiserver import patch as patchlib

        ctype = content_type.split(";", 1)[0].strip()
        if ctype == "application/apply-patch+yaml":
            return await self.apply(s, namespace, name, body, wo, subresource=subresource, force=force)
        supported = ["application/json-patch+json", "application/merge-patch+json"]
        if not s.custom:
            supported.append("application/strategic-merge-patch+json")
        if ctype not in supported:  # kube checks the patch type before reading the body
            raise errors.ApiError(errors.status(
                415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media "
                f"types include: {', '.join([*supported, 'application/apply-patch+yaml'])}"))
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            from ultraplane.apiserver.strictdecode import go_json_error

            # a strategic patch's decode error comes without the prefix in kube
            prefix = "" if ctype == "application/strategic-merge-patch+json" else "error decoding patch: "
            raise errors.bad_request(prefix + go_json_error(body)) from exc
        from ultraplane.apiserver.strictdecode import duplicate_fields

        # kube strictly decodes merge and strategic patches themselves (duplicate keys), then the patched object
        found = duplicate_fields(body, document) if wo.field_validation != "Ignore" and isinstance(document, dict) \
            else []
        if ctype == "application/json-patch+json":
            if not isinstance(document, list):
                raise errors.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")

            def apply_patch(obj: Obj) -> Obj:
                return patchlib.json_patch(obj, document)
        elif ctype == "application/merge-patch+json":
            def apply_patch(obj: Obj) -> Obj:
                return patchlib.merge_patch(obj, document)
        elif ctype == "application/strategic-merge-patch+json" and not s.custom:
            schema = self.schema_for(s)

            def apply_patch(obj: Obj) -> Obj:  # obj is guaranteed_update's own fresh copy
                return patchlib.strategic_merge_patch(obj, document, schema, in_place=True)
        else:
            raise errors.ApiError(errors.status(
                415, "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"))
        rv = ""
        if isinstance(document, dict):
            rv = str((document.get("metadata") or {}).get("resourceVersion") or "")

        def mutate(current: Obj) -> Obj:
            try:
                patched = apply_patch(current)
            except patchlib.PatchError as exc:
                if ctype == "application/json-patch+json":
                    # kube: NewGenericServerResponse(422, ...) with the patch error as its one cause
                    raise errors.ApiError(errors.status(
                        422, "Invalid", "the server rejected our request due to an error in our request",
                        {"causes": [{"reason": "UnexpectedServerResponse", "message": str(exc)}]})) from exc
                raise errors.bad_request(str(exc)) from exc
            if isinstance(patched, dict):
                self.check_patched_fields(s, patched, found, wo, ctype, document)
            return patched

        return await self.guaranteed_update(s, namespace, name, mutate, wo, subresource=subresource,
                                            precondition_rv=rv, operation="Update"), False

    def check_patched_fields(self, s: Strategy, patched: Obj, found: list[str], wo: WriteOptions, ctype: str,
                             document: Any) -> None:
        """fieldValidation on a JSON / merge / strategic patch: Strict is kube's 422 with the patch as the
        invalid value (the patched object as JSON, or Go's rendering of a strategic patch), Warn warns."""
        texts = self.strict_errors(s, patched, found)
        if not texts or wo.field_validation == "Ignore":
            return
        if wo.field_validation == "Warn":
            wo.warn(texts)
            return
        from ultraplane.apiserver.strictdecode import go_format
        from ultraplane.apiserver.validation import go_quote

        if ctype == "application/strategic-merge-patch+json":
            shown = go_format(document)
        else:
            shown = orjson.dumps(patched, option=orjson.OPT_SORT_KEYS).decode()
        raise errors.invalid("", "", "", [{"reason": "FieldValueInvalid", "field": "patch",
                                           "message": f"Invalid value: {go_quote(shown)}: strict decoding error: "
                                                      f"{', '.join(texts)}"}])

    def schema_for(self, s: Strategy) -> dict | None:
        if s.schema is not None:
            return s.schema
        schemas = getattr(self, "schemas", None)
        if schemas is None:
            return None
        return schemas.kind_schema(s.group, s.version, s.kind)

    def check_applied_fields(self, s: Strategy, config: Obj) -> None:
        """Apply converts the configuration to a typed value whatever fieldValidation says; an undeclared
        field fails that conversion, which kube 1.32 answers with a plain 500 (kubernetes#122480)."""
        unknown = self.undeclared_fields(s, config)
        if not unknown:
            return
        texts = [f"{typed_path(config, u)}: field not declared in schema" for u in unknown]
        why = texts[0] if len(texts) == 1 else "errors:\n" + "".join(f"  {t}\n" for t in texts)
        meta = config.get("metadata") or {}
        gvk = f"{s.group}/{s.version}, Kind={s.kind}"
        raise errors.ApiError({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": f"failed to create typed patch object ({meta.get('namespace', '')}/"
                                          f"{meta.get('name', '')}; {gvk}): {why}", "code": 500})

    async def apply(self, s: Strategy, namespace: str, name: str, body: bytes, wo: WriteOptions, *,
                    subresource: str = "", force: bool = False) -> tuple[Obj, bool]:
        """Server-side apply: create-or-merge the applied configuration, owned by the field manager."""
        if not wo.field_manager:
            raise errors.bad_request("PATCH, command: Apply is missing required field manager")
        try:
            config = orjson.loads(body)
        except orjson.JSONDecodeError:
            import yaml

            try:
                config = yaml.safe_load(body)
            except yaml.YAMLError as exc:
                raise errors.bad_request(f"error decoding YAML: {exc}") from exc
        if not isinstance(config, dict):
            raise errors.bad_request("the body of the request was in an unknown format")
        self.check_type(s, config)
        self.check_applied_fields(s, config)
        cmeta = config["metadata"]
        if cmeta.get("name") and cmeta["name"] != name:
            raise errors.bad_request(f"the name of the object ({cmeta['name']}) does not match the name on the URL "
                                     f"({name})")
        try:
            await self.read(s, namespace, name)
        except errors.ApiError as exc:
            if exc.code != 404 or subresource:
                raise
            cmeta["name"] = name
            applied_config = {**config, "metadata": {k: v for k, v in cmeta.items() if k in APPLIED_METADATA}}
            try:
                return await self.create(s, namespace, copy.deepcopy(config), wo, operation="Apply",
                                         applied=applied_config), True
            except errors.ApiError as exc2:
                if exc2.code != 409:
                    raise
        from ultraplane.apiserver import patch as patchlib

        schema = self.schema_for(s)
        applied = {k: v for k, v in config.items() if k not in ("apiVersion", "kind")}
        applied["metadata"] = {k: v for k, v in cmeta.items() if k in APPLIED_METADATA}
        manager = wo.manager()

        def mutate(current: Obj) -> Obj:
            merged = patchlib.strategic_merge_patch(current, applied, schema)
            return fieldmanager.apply(current, merged, applied, schema, manager, s.api_version, subresource, force,
                                      self.reset_fields(s, merged, current, subresource))

        return await self.guaranteed_update(s, namespace, name, mutate, wo, subresource=subresource,
                                            precondition_rv=str(cmeta.get("resourceVersion") or ""),
                                            operation="Apply"), False

    # ------------------------------------------------------------------ delete
    async def delete(self, s: Strategy, namespace: str, name: str, options: Obj, wo: WriteOptions) -> tuple[Obj, int]:
        """Returns (response body, HTTP code): the object while finalizers hold it, else a Success Status."""
        backend = self.backend_for(s)
        preconditions = options.get("preconditions") or {}
        for _attempt in range(32):
            current, mod_rev = await self.read(s, namespace, name)
            admitting = self.admit_write("DELETE", s, namespace, name, "", None, current)
            if admitting is not None:
                await admitting
            meta = current["metadata"]
            if preconditions.get("uid") and preconditions["uid"] != meta.get("uid"):
                raise errors.conflict(s.group, s.plural, name, f"Precondition failed: UID in precondition: "
                                      f"{preconditions['uid']}, UID in object meta: {meta.get('uid')}")
            if preconditions.get("resourceVersion") and preconditions["resourceVersion"] != meta["resourceVersion"]:
                raise errors.conflict(s.group, s.plural, name, f"Precondition failed: ResourceVersion in "
                                      f"precondition: {preconditions['resourceVersion']}, ResourceVersion in "
                                      f"object meta: {meta['resourceVersion']}")
            if s.prepare_delete is not None and not meta.get("deletionTimestamp"):
                s.prepare_delete(current)
            if s.grace_period is not None:
                grace = s.grace_period(current, options)
                pending = meta.get("deletionGracePeriodSeconds")
                if grace > 0 and meta.get("deletionTimestamp") and pending is not None and grace >= int(pending):
                    return current, 200  # already terminating at least that fast
                if grace > 0:
                    # kube's BeforeDelete: deletionTimestamp is when the grace period ends; the node
                    # (kubelet) deletes with grace 0 once the containers have stopped
                    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=grace)
                    meta["deletionTimestamp"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
                    meta["deletionGracePeriodSeconds"] = grace
                    if wo.dry_run:
                        return current, 200
                    try:
                        key = s.key(namespace, name)
                        revision = await backend.update(key, self.encode(s, current, key), mod_rev)
                    except RevisionConflict:
                        continue
                    meta["resourceVersion"] = str(revision)
                    return current, 200
            finalizers = list(meta.get("finalizers") or [])
            if s.plural == "namespaces" and (current.get("spec") or {}).get("finalizers"):
                finalizers.append("kubernetes")
            policy = options.get("propagationPolicy")
            if policy is None and options.get("orphanDependents") is not None:
                policy = "Orphan" if options["orphanDependents"] else "Background"
            # kube's deletionFinalizersForGarbageCollection: the garbage collector finishes these
            gc_finalizer = {"Foreground": "foregroundDeletion", "Orphan": "orphan"}.get(policy or "")
            if gc_finalizer and gc_finalizer not in finalizers and not meta.get("deletionTimestamp"):
                meta.setdefault("finalizers", []).append(gc_finalizer)
                finalizers.append(gc_finalizer)
            if finalizers:
                if meta.get("deletionTimestamp"):
                    return current, 200
                meta["deletionTimestamp"] = now_rfc3339()
                meta["deletionGracePeriodSeconds"] = 0
                if s.plural == "namespaces":
                    current.setdefault("status", {})["phase"] = "Terminating"
                if wo.dry_run:
                    return current, 200
                try:
                    key = s.key(namespace, name)
                    revision = await backend.update(key, self.encode(s, current, key), mod_rev)
                except RevisionConflict:
                    continue
                meta["resourceVersion"] = str(revision)
                if s.plural == "namespaces" and self.namespace_cleanup:
                    self.start_namespace_cleanup(name)
                return current, 200
            if wo.dry_run:
                return current, 200
            try:
                await backend.delete(s.key(namespace, name), mod_rev)
            except RevisionConflict as exc:
                if exc.current is None:
                    raise errors.not_found(s.group, s.plural, name) from exc
                continue
            deleted_hook = self.on_deleted.get(s.plural)
            if deleted_hook is not None:
                await deleted_hook(current)
            if s.return_deleted_object:
                return current, 200
            details: dict[str, Any] = {"name": name}
            if s.group:
                details["group"] = s.group
            details["kind"] = s.plural
            details["uid"] = meta.get("uid")
            return errors.success_status(details), 200
        raise errors.conflict(s.group, s.plural, name, errors.MODIFIED)

    async def remove(self, s: Strategy, namespace: str, name: str, mod_rev: int) -> None:
        try:
            await self.backend_for(s).delete(s.key(namespace, name), mod_rev)
        except RevisionConflict:
            pass

    async def delete_collection(self, s: Strategy, namespace: str, opts: ListOptions, options: Obj,
                                wo: WriteOptions) -> Obj:
        listed = await self.list(s, namespace, ListOptions(opts.label_selector, opts.field_selector))
        deleted = []
        for item in listed["items"]:
            meta = item["metadata"]
            try:
                await self.delete(s, meta.get("namespace", ""), meta["name"], options, wo)
                deleted.append(item)
            except errors.ApiError as exc:
                if exc.code != 404:
                    raise
        listed["items"] = deleted
        return listed

    # ------------------------------------------------------------------ namespace lifecycle
    def start_namespace_cleanup(self, namespace: str) -> None:
        task = asyncio.get_running_loop().create_task(self.finalize_namespace(namespace))
        self._ns_tasks.add(task)
        task.add_done_callback(self._ns_tasks.discard)

    async def finalize_namespace(self, namespace: str) -> None:
        """What kube's namespace controller does: delete the namespace's content, then drop the finalizer."""
        wo = WriteOptions(field_manager="namespace-controller")
        try:
            for _round in range(60):
                remaining = 0
                for s in list(self.strategies.values()):  # CRDs may come and go meanwhile
                    if not s.namespaced or "list" not in s.verbs or s.storage in {"events"} and s.group:
                        continue
                    page = await self.list(s, namespace, ListOptions())
                    for item in page["items"]:
                        remaining += 1
                        try:
                            await self.delete(s, namespace, item["metadata"]["name"], {}, wo)
                        except errors.ApiError:
                            pass
                if remaining == 0:
                    break
                await asyncio.sleep(0.5)
            ns = self.strategies[("", "v1", "namespaces")]

            def drop_finalizer(obj: Obj) -> Obj:
                obj.setdefault("spec", {})["finalizers"] = [f for f in obj.get("spec", {}).get("finalizers", [])
                                                            if f != "kubernetes"]
                return obj

            current, mod_rev = await self.read(ns, "", namespace)
            current.setdefault("spec", {})["finalizers"] = [
                f for f in current.get("spec", {}).get("finalizers", []) if f != "kubernetes"]
            if current["metadata"].get("finalizers") or current["spec"]["finalizers"]:
                await self.backend_for(ns).update(ns.key("", namespace), encode_for_storage(current), mod_rev)
            else:
                await self.remove(ns, "", namespace, mod_rev)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("finalizing namespace %s failed", namespace)

    # ------------------------------------------------------------------ watch
    async def watch(self, s: Strategy, namespace: str, name: str, opts: ListOptions, *, bookmarks: bool,
                    timeout: float) -> AsyncIterator[bytes]:
        """Watch events as JSON lines. Raises ApiError before the first line for bad selectors."""
        flt = Filter(s, opts.label_selector, opts.field_selector)
        cache = self.cache_for(s)
        rv = opts.resource_version
        initial: list[Obj] = []
        if opts.send_initial_events is not None:
            # watch-list: the state at a revision not older than rv (as ADDED events, then a bookmark
            # marking their end), or with sendInitialEvents=false only the changes after it
            try:
                wanted = int(rv) if rv not in ("", "0") else 0
            except ValueError as exc:
                raise errors.bad_request(f"invalid resource version: {rv}") from exc
            if wanted > cache.revision:
                raise errors.ApiError(errors.status(
                    504, "Timeout", f"Too large resource version: {wanted}, current: {cache.revision}",
                    {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                     "retryAfterSeconds": 1}))
            if opts.send_initial_events:
                listed = await self.list(s, namespace, ListOptions(opts.label_selector, opts.field_selector))
                start_rev = int(listed["metadata"]["resourceVersion"])
                initial = [item for item in listed["items"] if not name or item["metadata"]["name"] == name]
            else:
                start_rev = wanted or cache.revision
            return self._watch_stream(s, cache, self._watch_scope(s, namespace, name, flt), start_rev, initial, flt,
                                      bookmarks, timeout, initial_events_end=bool(opts.send_initial_events))
        if rv in ("", "0"):
            listed = await self.list(s, namespace, ListOptions(opts.label_selector, opts.field_selector))
            start_rev = int(listed["metadata"]["resourceVersion"])
            initial = [item for item in listed["items"] if not name or item["metadata"]["name"] == name]
        else:
            try:
                start_rev = int(rv)
            except ValueError as exc:
                raise errors.bad_request(f"invalid resource version: {rv}") from exc
        return self._watch_stream(s, cache, self._watch_scope(s, namespace, name, flt), start_rev, initial, flt,
                                  bookmarks, timeout)

    @staticmethod
    def _watch_scope(s: Strategy, namespace: str, name: str,
                     flt: Filter) -> tuple[bytes, bool, tuple[str, TriggerFunc, str] | None]:
        """Where the watch cache files a watch: (key, True) for one object, else (collection prefix, False)
        and a trigger (field, function, value) when the selector pins the resource's trigger field.
        The selectors still judge every event; the scope only keeps other events away."""
        if name:
            return s.key(namespace, name), True, None
        pinned = flt.pinned_fields()
        if "metadata.name" in pinned and (namespace or not s.namespaced):  # kubectl get pod p -w, informers of one
            return s.key(namespace, pinned["metadata.name"]), True, None
        if s.namespaced and not namespace and pinned.get("metadata.namespace"):
            namespace = pinned["metadata.namespace"]
        trigger = None
        field_name, fields = s.trigger_field, s.fields
        if field_name and field_name in pinned and s.from_storage is None:
            trigger = (field_name, lambda obj: fields(obj).get(field_name, ""), pinned[field_name])
        return s.collection_prefix(namespace), False, trigger

    async def _watch_stream(self, s: Strategy, cache: WatchCache,
                            scope: tuple[bytes, bool, tuple[str, TriggerFunc, str] | None], start_rev: int,
                            initial: list[Obj], flt: Filter, bookmarks: bool, timeout: float, *,
                            initial_events_end: bool = False) -> AsyncIterator[bytes]:
        dumps = orjson.dumps
        key_prefix, exact, trigger = scope
        try:
            # the subscription encodes (or rejects) each event as it is dispatched, so this task wakes
            # only for lines it writes
            sub: Subscription = cache.subscribe(s.prefix, key_prefix, exact, start_rev,
                                                lambda ev: self._event_line(ev, flt, s), trigger)
        except RevisionCompacted as exc:
            yield dumps({"type": "ERROR", "object": errors.status(
                410, "Expired", f"too old resource version: {start_rev} ({exc.compact_revision})")}) + b"\n"
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout > 0 else None
        last_rev = start_rev
        try:
            for obj in initial:
                obj["kind"] = s.kind
                obj["apiVersion"] = s.api_version
                yield dumps({"type": "ADDED", "object": obj}) + b"\n"
            if initial_events_end and bookmarks:  # watch-list: the initial state is complete at start_rev
                yield dumps({"type": "BOOKMARK", "object": {
                    "kind": s.kind, "apiVersion": s.api_version,
                    "metadata": {"resourceVersion": str(start_rev),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}}) + b"\n"
            queue = sub.queue
            next_bookmark = next_bookmark_time(loop.time(), deadline) if bookmarks else None
            while True:
                # without bookmarks an idle watch sleeps until its deadline
                now = loop.time()
                wait = IDLE_WATCH_WAIT if next_bookmark is None else max(0.0, next_bookmark - now)
                if deadline is not None:
                    if deadline <= now:
                        break
                    wait = min(wait, deadline - now)
                if not queue:
                    await sub.wait(wait)
                if queue:
                    out = b"".join(queue)
                    queue.clear()
                    yield out
                elif sub.ended:
                    break
                if next_bookmark is not None and loop.time() >= next_bookmark:
                    next_bookmark = next_bookmark_time(loop.time(), deadline)
                    if cache.revision > 0:
                        # every event up to cache.revision has been dispatched, and this watch's are written
                        last_rev = max(last_rev, cache.revision)
                        yield dumps({"type": "BOOKMARK", "object": {
                            "kind": s.kind, "apiVersion": s.api_version,
                            "metadata": {"resourceVersion": str(last_rev)}}}) + b"\n"
        finally:
            sub.close()

    @staticmethod
    def _event_line(ev: CachedEvent, flt: Filter, s: Strategy) -> bytes | None:
        """The watch line ev is for a watcher with this filter (None: not for it), as kube's cacheWatcher
        decides: an object leaving the selection is DELETED (its previous state at the event's
        revision), one entering it ADDED. Each line is encoded once per event and shown version."""
        previous = False
        if ev.deleted or ev.prev_value is None:
            if not flt.empty and not flt.matches_event(ev, False):
                return None
            kind = "DELETED" if ev.deleted else "ADDED"
        elif flt.empty:
            kind = "MODIFIED"
        else:
            now, before = flt.matches_event(ev, False), flt.matches_event(ev, True)
            if now:
                kind = "MODIFIED" if before else "ADDED"
            elif before:
                kind, previous = "DELETED", True
            else:
                return None
        line_key = (id(s), kind)
        line = ev.lines.get(line_key)
        if line is None:
            obj = event_object(ev, s, previous)
            if obj is None:
                return None
            line = ev.lines[line_key] = orjson.dumps({"type": kind, "object": obj}) + b"\n"
        return line

