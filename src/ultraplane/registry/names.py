"""Validation of repository names, tags and digests (the spec's grammar); nothing else reaches the disk."""

from __future__ import annotations

import hashlib
import re

from ultraplane.registry.errors import RegistryError

# The spec's name grammar: path components of lowercase alphanumerics joined by separators. No component can
# be "." or ".." or start with "_", so a valid name can never escape or collide with storage directories.
_NAME = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_DIGEST = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
# Registered algorithms and the length of their lowercase hex encoding.
DIGEST_ALGORITHMS = {"sha256": 64, "sha512": 128}
MAX_NAME_LENGTH = 255


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise RegistryError("NAME_INVALID", {"name": name})
    return name


def is_tag(reference: str) -> bool:
    return _TAG.fullmatch(reference) is not None


def parse_digest(digest: str) -> tuple[str, str]:
    """Split "algorithm:hex", refusing anything that is not a registered algorithm's lowercase hex."""
    match = _DIGEST.fullmatch(digest)
    if not match:
        raise RegistryError("DIGEST_INVALID", {"digest": digest}, message="invalid digest")
    algorithm, encoded = match.groups()
    length = DIGEST_ALGORITHMS.get(algorithm)
    if length is None:
        raise RegistryError("UNSUPPORTED", {"digest": digest}, status=400,
                            message=f"unsupported digest algorithm {algorithm}")
    if len(encoded) != length or encoded.strip("0123456789abcdef"):
        raise RegistryError("DIGEST_INVALID", {"digest": digest}, message="invalid digest")
    return algorithm, encoded


def check_reference(reference: str) -> tuple[str | None, str | None]:
    """A manifest reference is a tag or a digest: return (tag, None) or (None, digest)."""
    if ":" in reference:
        parse_digest(reference)
        return None, reference
    if is_tag(reference):
        return reference, None
    raise RegistryError("TAG_INVALID", {"reference": reference}, message="invalid tag or digest")


def new_hasher(algorithm: str) -> hashlib._Hash:
    return hashlib.new(algorithm)


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
