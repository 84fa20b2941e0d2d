"""Compact JWS tokens (RFC 7515/7519) signed and verified with ``cryptography``.

Just what service-account tokens need: RS256/384/512 for RSA keys and ES256/384/512 for the P-256,
P-384 and P-521 curves, a ``kid`` header derived from the public key as kube-apiserver derives it
(unpadded base64url of the SHA-256 of the DER SubjectPublicKeyInfo), and key files in kube's
formats (``--service-account-key-file`` may hold public keys, certificates or private keys).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# go-jose's text for a signature that does not verify (kube passes it on in TokenReview errors)
BAD_SIGNATURE = "go-jose/go-jose: error in cryptographic primitive"

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVES = {"secp256r1": ("ES256", 32), "secp384r1": ("ES384", 48), "secp521r1": ("ES512", 66)}


class JwtError(Exception):
    """A token that is not a well-formed JWS or whose signature does not verify."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JwtError("illegal base64 data") from exc


def key_id(public_key: PublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b64url(hashlib.sha256(der).digest())


def algorithm_for(key: PublicKey | PrivateKey) -> str:
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "RS256"
    name = key.curve.name
    if name not in _CURVES:
        raise ValueError("unknown private key curve, must be 256, 384, or 521")
    return _CURVES[name][0]


@dataclass(frozen=True)
class SigningKey:
    key: PrivateKey
    alg: str
    kid: str
    header: str  # the encoded JOSE header, the same for every token

    @classmethod
    def of(cls, key: PrivateKey) -> SigningKey:
        alg = algorithm_for(key)
        kid = key_id(key.public_key())
        header = b64url(orjson.dumps({"alg": alg, "kid": kid}))
        return cls(key, alg, kid, header)


def sign(claims: dict[str, Any], signer: SigningKey) -> str:
    """The compact serialization of ``claims`` (keys sorted, as Go marshals the merged claim maps)."""
    signing_input = f"{signer.header}.{b64url(orjson.dumps(claims, option=orjson.OPT_SORT_KEYS))}"
    data = signing_input.encode("ascii")
    digest = _HASHES[signer.alg[2:]]()
    key = signer.key
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(data, padding.PKCS1v15(), digest)
    else:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest)))
        size = _CURVES[key.curve.name][1]
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return f"{signing_input}.{b64url(signature)}"


@dataclass
class Parsed:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def parse(token: str) -> Parsed:
    """Split and decode a compact JWS without checking its signature."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("compact JWS format must have three parts")
    try:
        header = orjson.loads(b64url_decode(parts[0]))
        claims = orjson.loads(b64url_decode(parts[1]))
    except orjson.JSONDecodeError as exc:
        raise JwtError("invalid JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwtError("invalid JSON")
    return Parsed(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), b64url_decode(parts[2]))


def verify_signature(parsed: Parsed, public_key: PublicKey) -> bool:
    alg = parsed.header.get("alg", "")
    if not isinstance(alg, str) or alg[2:] not in _HASHES:
        return False
    digest = _HASHES[alg[2:]]()
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            if not alg.startswith("RS"):
                return False
            public_key.verify(parsed.signature, parsed.signing_input, padding.PKCS1v15(), digest)
            return True
        if alg != _CURVES.get(public_key.curve.name, ("", 0))[0]:
            return False
        size = _CURVES[public_key.curve.name][1]
        if len(parsed.signature) != 2 * size:
            return False
        r = int.from_bytes(parsed.signature[:size], "big")
        s = int.from_bytes(parsed.signature[size:], "big")
        public_key.verify(encode_dss_signature(r, s), parsed.signing_input, ec.ECDSA(digest))
        return True
    except InvalidSignature:
        return False


# ---------------------------------------------------------------- key files
def generate_signing_key(path: Path) -> None:
    """An RSA-2048 key in PKCS#1 PEM (kubeadm's sa.key), written owner-only."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pem)
    tmp.chmod(0o600)
    tmp.replace(path)
    path.with_suffix(".pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def load_private_key(path: str | Path) -> PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError(f"{path}: not an RSA or ECDSA private key")
    return key


def load_public_keys(path: str | Path) -> list[PublicKey]:
    """Every key in a PEM file: public keys, certificates' keys, and private keys' public halves."""
    data = Path(path).read_bytes()
    keys: list[PublicKey] = []
    marker = b"-----BEGIN "
    for chunk in data.split(marker)[1:]:
        block = marker + chunk
        label = chunk.split(b"-----", 1)[0]
        key: Any
        if label.endswith(b"PRIVATE KEY"):
            key = serialization.load_pem_private_key(block, password=None).public_key()
        elif label == b"CERTIFICATE":
            key = x509.load_pem_x509_certificate(block).public_key()
        elif label.endswith(b"PUBLIC KEY"):
            key = serialization.load_pem_public_key(block)
        else:
            continue
        if isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            keys.append(key)
    if not keys:
        raise ValueError(f"{path}: no RSA or ECDSA keys found")
    return keys
