"""Reading a kubeconfig: the current context's server, TLS material and credentials."""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class KubeconfigError(ValueError):
    pass


@dataclass(frozen=True)
class Credentials:
    server: str  # https://host:port
    ssl_context: ssl.SSLContext | None
    token: str | None = None


def _named(entries: list[dict[str, Any]] | None, name: str, kind: str) -> dict[str, Any]:
    for entry in entries or []:
        if entry.get("name") == name:
            return entry.get(kind) or {}
    raise KubeconfigError(f'{kind} "{name}" not found in kubeconfig')


def _material(section: dict[str, Any], key: str, base: Path) -> bytes | None:
    """`<key>-data` (base64) wins over `<key>` (a path relative to the kubeconfig's directory)."""
    data = section.get(f"{key}-data")
    if data:
        return base64.b64decode(data)
    path = section.get(key)
    if path:
        return (base / path).read_bytes()
    return None


def load(path: str | os.PathLike[str], context: str | None = None) -> Credentials:
    file = Path(path)
    return from_config(yaml.safe_load(file.read_text()) or {}, context, file.parent)


def flatten(path: str | os.PathLike[str], context: str | None = None) -> dict[str, Any]:
    """A self-contained kubeconfig of one context: file references inlined as `-data`, other contexts dropped
    (what `kubectl config view --flatten --minify` prints), for storing a cluster's credentials elsewhere."""
    file = Path(path)
    config = yaml.safe_load(file.read_text()) or {}
    context_name = context or config.get("current-context")
    if not context_name:
        raise KubeconfigError("kubeconfig has no current-context")
    ctx = _named(config.get("contexts"), context_name, "context")
    cluster = dict(_named(config.get("clusters"), ctx.get("cluster", ""), "cluster"))
    user = dict(_named(config.get("users"), ctx.get("user", ""), "user")) if ctx.get("user") else {}
    for section, keys in ((cluster, ("certificate-authority",)), (user, ("client-certificate", "client-key"))):
        for key in keys:
            material = _material(section, key, file.parent)
            section.pop(key, None)
            if material:
                section[f"{key}-data"] = base64.b64encode(material).decode()
    if user.get("tokenFile"):
        user["token"] = (file.parent / user.pop("tokenFile")).read_text().strip()
    return {"apiVersion": "v1", "kind": "Config", "current-context": context_name,
            "contexts": [{"name": context_name, "context": {"cluster": ctx.get("cluster", ""),
                                                           "user": ctx.get("user", "")}}],
            "clusters": [{"name": ctx.get("cluster", ""), "cluster": cluster}],
            "users": [{"name": ctx.get("user", ""), "user": user}] if ctx.get("user") else []}


def from_config(config: dict[str, Any], context: str | None = None, base: Path | None = None) -> Credentials:
    """Credentials from a parsed kubeconfig; relative file references resolve against `base`."""
    base = base or Path.cwd()
    context_name = context or config.get("current-context")
    if not context_name:
        raise KubeconfigError("kubeconfig has no current-context")
    ctx = _named(config.get("contexts"), context_name, "context")
    cluster = _named(config.get("clusters"), ctx.get("cluster", ""), "cluster")
    user = _named(config.get("users"), ctx.get("user", ""), "user") if ctx.get("user") else {}
    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f'cluster "{ctx.get("cluster")}" has no server')
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = (base / user["tokenFile"]).read_text().strip()
    if not server.startswith("https://"):
        return Credentials(server.rstrip("/"), None, token)
    tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if cluster.get("insecure-skip-tls-verify"):
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    else:
        ca = _material(cluster, "certificate-authority", base)
        if ca:
            tls.load_verify_locations(cadata=ca.decode())
    cert = _material(user, "client-certificate", base)
    key = _material(user, "client-key", base)
    if cert and key:
        # ssl only loads a chain from files; keep them in a private temporary directory for the load.
        with tempfile.TemporaryDirectory() as tmp:
            cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert_file.write_bytes(cert)
            key_file.touch(mode=0o600)
            key_file.write_bytes(key)
            tls.load_cert_chain(str(cert_file), str(key_file))
    return Credentials(server.rstrip("/"), tls, token)
