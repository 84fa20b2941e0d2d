"""Manifests from a source tree: a plain directory of YAML/JSON (optionally recursive) or a kustomization
(`kubectl kustomize`), then secret placeholders resolved.

Secret references: a string value `<secret:NAMESPACE/NAME#KEY>` anywhere in a rendered manifest (the whole
value or part of it) is replaced with that key of the Kubernetes Secret in the controller's cluster, at render
time, as argocd-vault-plugin's `<path#key>` placeholders are. Git only ever holds the placeholder.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
SECRET_RE = re.compile(r"<secret:([a-z0-9.-]+)/([a-z0-9.-]+)#([-._a-zA-Z0-9]+)>")
SecretReader = Callable[[str, str], Awaitable[Obj | None]]


class RenderError(Exception):
    """The source cannot be turned into manifests; the message says which file and why."""


def _under(files: dict[str, bytes], path: str) -> dict[str, bytes]:
    prefix = path.strip("/")
    if prefix in ("", "."):
        return dict(files)
    out = {name[len(prefix) + 1:]: data for name, data in files.items() if name.startswith(prefix + "/")}
    if not out:
        raise RenderError(f"{path}: app path does not exist")
    return out


def parse_documents(name: str, data: bytes) -> list[Obj]:
    try:
        if name.endswith(".json"):
            docs: list[Any] = [json.loads(data)]
        else:
            docs = list(yaml.load_all(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    except (ValueError, yaml.YAMLError) as exc:
        raise RenderError(f"failed to unmarshal {name}: {exc}".replace("\n", " ")) from None
    out: list[Obj] = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise RenderError(f"failed to unmarshal {name}: not a Kubernetes object")
        if doc.get("kind", "").endswith("List") and isinstance(doc.get("items"), list):
            out.extend(doc["items"])
        else:
            out.append(doc)
    for doc in out:
        if not doc.get("apiVersion") or not doc.get("kind"):
            raise RenderError(f"{name}: Object 'Kind' is missing in '{json.dumps(doc)[:200]}'")
        if not (doc.get("metadata") or {}).get("name"):
            raise RenderError(f"{name}: {doc['kind']} has no metadata.name")
    return out


def directory_manifests(files: dict[str, bytes], directory: Obj) -> list[Obj]:
    recurse = bool(directory.get("recurse"))
    include = directory.get("include") or ""
    exclude = directory.get("exclude") or ""
    manifests: list[Obj] = []
    for name in sorted(files):
        if not name.endswith(MANIFEST_SUFFIXES) or ("/" in name and not recurse):
            continue
        if include and not _glob_any(name, include):
            continue
        if exclude and _glob_any(name, exclude):
            continue
        manifests.extend(parse_documents(name, files[name]))
    return manifests


def _glob_any(name: str, patterns: str) -> bool:
    # Argo accepts one glob or a {a,b} list of globs
    inner = patterns[1:-1] if patterns.startswith("{") and patterns.endswith("}") else patterns
    return any(fnmatch.fnmatch(name, p.strip()) or fnmatch.fnmatch(Path(name).name, p.strip())
               for p in inner.split(","))


async def kustomize(files: dict[str, bytes], path: str) -> list[Obj]:
    """`kubectl kustomize` over the whole checkout, so overlays can reach bases outside `path`."""
    with tempfile.TemporaryDirectory(prefix="ultraplane-kustomize-") as tmp:
        root = Path(tmp)
        for name, data in files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        proc = await asyncio.create_subprocess_exec(
            "kubectl", "kustomize", str(root / path.strip("/")), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RenderError(f"kustomize build {path} failed: {err.decode(errors='replace').strip()}")
    return parse_documents(f"{path} (kustomize output)", out)


def source_type(files: dict[str, bytes], source: Obj) -> str:
    """Argo's status.sourceType for the tree at source.path."""
    tree = _under(files, source.get("path") or ".")
    if source.get("helm") or source.get("chart") or "Chart.yaml" in tree:
        return "Helm"
    if source.get("kustomize") is not None or any(name in tree for name in KUSTOMIZATION_FILES):
        return "Kustomize"
    return "Directory"


async def render(files: dict[str, bytes], source: Obj) -> list[Obj]:
    path = source.get("path") or "."
    kind = source_type(files, source)
    if kind == "Helm":
        raise RenderError("helm charts are not supported: no helm binary or maintained Python renderer available")
    if kind == "Kustomize":
        return await kustomize(files, path)
    return directory_manifests(_under(files, path), source.get("directory") or {})


async def resolve_secrets(manifests: list[Obj], read_secret: SecretReader) -> list[Obj]:
    """Replace every `<secret:ns/name#key>` placeholder; a missing Secret or key is a RenderError."""
    cache: dict[tuple[str, str], Obj | None] = {}
    refs = {m.groups() for m in SECRET_RE.finditer(json.dumps(manifests))}
    if not refs:
        return manifests
    values: dict[str, str] = {}
    for namespace, name, key in refs:
        if (namespace, name) not in cache:
            cache[(namespace, name)] = await read_secret(namespace, name)
        secret = cache[(namespace, name)]
        if secret is None:
            raise RenderError(f"secret {namespace}/{name} referenced by <secret:{namespace}/{name}#{key}> not found")
        if key in (secret.get("data") or {}):
            values[f"<secret:{namespace}/{name}#{key}>"] = base64.b64decode(secret["data"][key]).decode()
        elif key in (secret.get("stringData") or {}):
            values[f"<secret:{namespace}/{name}#{key}>"] = secret["stringData"][key]
        else:
            raise RenderError(f"secret {namespace}/{name} has no key {key!r}")

    def substitute(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: substitute(v) for k, v in node.items()}
        if isinstance(node, list):
            return [substitute(v) for v in node]
        if isinstance(node, str) and "<secret:" in node:
            return SECRET_RE.sub(lambda m: values[m.group(0)], node)
        return node

    return [substitute(m) for m in manifests]
