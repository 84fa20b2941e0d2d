"""Encryption at rest: kube-apiserver's EncryptionConfiguration (apiserver.config.k8s.io/v1).

Values of the configured resources are stored as ``k8s:enc:aesgcm:v1:<key name>:`` + 12-byte nonce +
AES-GCM ciphertext (with tag), authenticated with the storage key as kube does, so a value copied
to another key does not decrypt. The first provider of a resource writes; every provider reads
(``identity`` reads values stored before encryption was turned on). Only ``aesgcm`` and
``identity`` are supported; other providers in the file are refused at start.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENVELOPE = b"k8s:enc:"
NONCE_BYTES = 12


class EncryptionConfigError(ValueError):
    pass


@dataclass
class AesGcmKey:
    name: str
    prefix: bytes
    cipher: AESGCM


class Providers:
    """The ordered providers for one set of resources: writes use the first, reads try them all."""

    def __init__(self, keys: list[list[AesGcmKey]], identity_first: bool, identity_reads: bool) -> None:
        self.keys = [k for group in keys for k in group]
        self.writer: AesGcmKey | None = None if identity_first or not self.keys else self.keys[0]
        self.identity_reads = identity_reads

    def encrypt(self, key: bytes, plaintext: bytes) -> bytes:
        if self.writer is None:
            return plaintext
        nonce = os.urandom(NONCE_BYTES)
        return self.writer.prefix + nonce + self.writer.cipher.encrypt(nonce, plaintext, key)

    def decrypt(self, key: bytes, stored: bytes) -> bytes:
        if not stored.startswith(ENVELOPE):
            if self.identity_reads:
                return stored
            raise EncryptionConfigError("no matching prefix found")
        for k in self.keys:
            if stored.startswith(k.prefix):
                body = stored[len(k.prefix):]
                return k.cipher.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], key)
        raise EncryptionConfigError("no matching prefix found")


class EncryptionConfig:
    """Providers per resource ("secrets", "widgets.example.com"; "*.", "*.*" and "*.group" wildcards)."""

    def __init__(self, rules: list[tuple[list[str], Providers]]) -> None:
        self.rules = rules
        self._cache: dict[str, Providers | None] = {}

    def providers_for(self, group_resource: str) -> Providers | None:
        if group_resource in self._cache:
            return self._cache[group_resource]
        found: Providers | None = None
        resource, _, group = group_resource.partition(".")
        for names, providers in self.rules:
            if any(n in (group_resource, f"{resource}.", f"*.{group}", "*.*") or (n == "*." and not group)
                   for n in names):
                found = providers
                break
        if found is not None and found.writer is None and not found.keys:
            found = None  # identity only: nothing to transform
        self._cache[group_resource] = found
        return found


def _aesgcm_keys(spec: dict[str, Any]) -> list[AesGcmKey]:
    keys: list[AesGcmKey] = []
    for entry in spec.get("keys") or []:
        name = str(entry.get("name") or "")
        try:
            secret = base64.b64decode(str(entry.get("secret") or ""), validate=True)
        except ValueError as exc:
            raise EncryptionConfigError(f"key {name!r}: secret is not valid base64") from exc
        if len(secret) not in (16, 24, 32):
            raise EncryptionConfigError(f"key {name!r}: aes-gcm keys are 16, 24 or 32 bytes, got {len(secret)}")
        if not name:
            raise EncryptionConfigError("an aesgcm key needs a name")
        keys.append(AesGcmKey(name, ENVELOPE + b"aesgcm:v1:" + name.encode() + b":", AESGCM(secret)))
    if not keys:
        raise EncryptionConfigError("aesgcm provider needs at least one key")
    return keys


def parse(text: str) -> EncryptionConfig:
    doc = yaml.safe_load(text) or {}
    if doc.get("kind") != "EncryptionConfiguration" or doc.get("apiVersion") != "apiserver.config.k8s.io/v1":
        raise EncryptionConfigError("want kind EncryptionConfiguration, apiVersion apiserver.config.k8s.io/v1")
    rules: list[tuple[list[str], Providers]] = []
    for rule in doc.get("resources") or []:
        names = [str(n) for n in rule.get("resources") or []]
        keys: list[list[AesGcmKey]] = []
        identity_first = identity_reads = False
        for i, provider in enumerate(rule.get("providers") or []):
            if "aesgcm" in provider:
                keys.append(_aesgcm_keys(provider["aesgcm"] or {}))
            elif "identity" in provider:
                identity_reads = True
                identity_first = identity_first or i == 0
            else:
                raise EncryptionConfigError(f"unsupported provider {sorted(provider)}: only aesgcm and identity")
        if not names or not (keys or identity_reads):
            raise EncryptionConfigError("each resources entry needs resources and providers")
        rules.append((names, Providers(keys, identity_first, identity_reads)))
    return EncryptionConfig(rules)


def load(path: Path) -> EncryptionConfig:
    try:
        return parse(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise EncryptionConfigError(f"cannot read encryption provider config {path}: {exc}") from exc


def ensure_default(path: Path) -> Path:
    """Write a config encrypting Secrets with a fresh 32-byte AES-GCM key, unless one exists."""
    if path.exists():
        return path
    key = base64.b64encode(os.urandom(32)).decode()
    text = f"""apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources:
  - secrets
  providers:
  - aesgcm:
      keys:
      - name: key1
        secret: {key}
  - identity: {{}}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
