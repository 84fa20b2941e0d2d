"""Registry-held signing keys and the two signature formats clients verify with their own tools.

Keys (ECDSA P-256) live in DATA_DIR/signing/keys/<kid>.key (PEM, 0600) with a self-signed code-signing
certificate <kid>.crt beside each (Notation's x509 scheme wants a certificate chain); DATA_DIR/signing/active
names the key new signatures use. Rotation adds a key and makes it active; old keys keep verifying.

Formats (facts from the cosign and Notary Project specifications):
- cosign: the "simple signing" payload as the single layer (media type
  application/vnd.dev.cosign.simplesigning.v1+json) of an OCI manifest tagged `sha256-<hex>.sig` in the image's
  repository, the base64 DER ECDSA-SHA256 signature over the payload in the layer annotation
  `dev.cosignproject.cosign/signature`.
- Notation: a referrer manifest (artifactType application/vnd.cncf.notary.signature, subject the image) whose
  layer is a flattened JWS JSON envelope (application/jose+json) over {"targetArtifact": descriptor}, signing
  scheme notary.x509 with the certificate chain in the unprotected `x5c` header.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from joserfc.registry import HeaderParameter

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
COSIGN_LAYER = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"
NOTATION_ARTIFACT = "application/vnd.cncf.notary.signature"
NOTATION_PAYLOAD = "application/vnd.cncf.notary.payload.v1+json"
JOSE_TYPE = "application/jose+json"
THUMBPRINT_ANNOTATION = "io.cncf.notary.x509chain.thumbprint#S256"
_SCHEME = "io.cncf.notary.signingScheme"
_SIGNING_TIME = "io.cncf.notary.signingTime"
# Notation's protected header parameters, declared so joserfc accepts them (and `crit` naming the scheme).
_NOTARY_REGISTRY = jws.JWSRegistry(header_registry={
    _SCHEME: HeaderParameter("Notary signing scheme", "str"),
    _SIGNING_TIME: HeaderParameter("Notary signing time", "str"),
    "io.cncf.notary.expiry": HeaderParameter("Notary expiry", "str"),
    "io.cncf.notary.signingAgent": HeaderParameter("Notary signing agent", "str"),
}, algorithms=["ES256"])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def cosign_tag(digest: str) -> str:
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}-{encoded}.sig"


@dataclass
class SigningKey:
    kid: str
    private: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def public(self) -> ec.EllipticCurvePublicKey:
        return self.private.public_key()

    def public_pem(self) -> str:
        return self.public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def jwk(self) -> dict[str, Any]:
        document = dict(ECKey.import_key(self.public_pem()).as_dict(private=False))
        document.update({"kid": self.kid, "use": "sig", "alg": "ES256",
                         "x5c": [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER))
                                 .decode()]})
        return document


def _kid(public: ec.EllipticCurvePublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def _certificate(private: ec.EllipticCurvePrivateKey, kid: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ultraplane"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"ultraplane-registry-signing-{kid}")])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .sign(private, hashes.SHA256()))


class KeyRing:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys: dict[str, SigningKey] = {}
        self.active_kid = ""
        (directory / "keys").mkdir(parents=True, exist_ok=True)
        self._load()
        if not self.keys:
            self.rotate()

    def _load(self) -> None:
        keys_dir = self.directory / "keys"
        for entry in sorted(os.listdir(keys_dir)):
            if not entry.endswith(".key"):
                continue
            kid = entry[:-4]
            private = serialization.load_pem_private_key((keys_dir / entry).read_bytes(), None)
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            certificate = x509.load_pem_x509_certificate((keys_dir / f"{kid}.crt").read_bytes())
            self.keys[kid] = SigningKey(kid, private, certificate)
        try:
            self.active_kid = (self.directory / "active").read_text().strip()
        except FileNotFoundError:
            self.active_kid = next(iter(self.keys), "")

    @property
    def active(self) -> SigningKey:
        return self.keys[self.active_kid]

    def rotate(self) -> SigningKey:
        """A new active key; the old ones stay for verification."""
        private = ec.generate_private_key(ec.SECP256R1())
        kid = _kid(private.public_key())
        certificate = _certificate(private, kid)
        keys_dir = self.directory / "keys"
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        fd = os.open(keys_dir / f"{kid}.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        (keys_dir / f"{kid}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        (self.directory / "active").write_text(kid)
        self.keys[kid] = SigningKey(kid, private, certificate)
        self.active_kid = kid
        return self.keys[kid]

    def public_document(self) -> dict[str, Any]:
        return {"active": self.active_kid,
                "keys": [{"kid": key.kid, "active": key.kid == self.active_kid, "pem": key.public_pem(),
                          "certificate": key.certificate.public_bytes(serialization.Encoding.PEM).decode()}
                         for key in self.keys.values()],
                "jwks": {"keys": [key.jwk() for key in self.keys.values()]}}

    def key_for_public(self, public: ec.EllipticCurvePublicKey) -> SigningKey | None:
        return self.keys.get(_kid(public))


# -- cosign ---------------------------------------------------------------------------------------------------

def cosign_payload(docker_reference: str, digest: str) -> bytes:
    return orjson.dumps({"critical": {"identity": {"docker-reference": docker_reference},
                                      "image": {"docker-manifest-digest": digest}, "type": COSIGN_TYPE},
                         "optional": None})


def cosign_config(payload_digest: str) -> bytes:
    """The config blob cosign writes for a signature image (an image config over the payload layer)."""
    return orjson.dumps({"architecture": "", "created": "0001-01-01T00:00:00Z",
                         "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "",
                         "rootfs": {"type": "layers", "diff_ids": [payload_digest]}, "config": {}})


def cosign_layer(key: SigningKey, docker_reference: str, digest: str) -> tuple[bytes, dict[str, Any]]:
    payload = cosign_payload(docker_reference, digest)
    signature = key.private.sign(payload, ec.ECDSA(hashes.SHA256()))
    descriptor = {"mediaType": COSIGN_LAYER, "size": len(payload), "digest": sha256(payload),
                  "annotations": {COSIGN_ANNOTATION: base64.b64encode(signature).decode()}}
    return payload, descriptor


def cosign_manifest(layers: list[dict[str, Any]], config: bytes) -> bytes:
    return orjson.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                         "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": sha256(config)},
                         "layers": layers})


def verify_cosign_layer(keys: list[ec.EllipticCurvePublicKey], layer: dict[str, Any], payload: bytes,
                        digest: str) -> str | None:
    """None if `payload` is the layer's content, claims `digest` and carries a good signature by one of `keys`;
    else why not."""
    if sha256(payload) != layer.get("digest"):
        return "the payload does not match its layer digest"
    try:
        document = orjson.loads(payload)
        critical = document["critical"]
        claimed = critical["image"]["docker-manifest-digest"]
        kind = critical["type"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "the payload is not a simple-signing document"
    if kind != COSIGN_TYPE:
        return f"unexpected payload type {kind!r}"
    if claimed != digest:
        return f"the payload signs {claimed}, not {digest}"
    encoded = (layer.get("annotations") or {}).get(COSIGN_ANNOTATION)
    if not isinstance(encoded, str):
        return "no signature annotation"
    try:
        signature = base64.b64decode(encoded, validate=True)
    except ValueError:
        return "the signature is not base64"
    for public in keys:
        try:
            public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            return None
        except InvalidSignature:
            continue
    return "the signature does not verify with any registry key"


# -- Notation -------------------------------------------------------------------------------------------------

def notation_envelope(key: SigningKey, target: dict[str, Any], signing_time: str) -> bytes:
    payload = orjson.dumps({"targetArtifact": target})
    protected = {"alg": "ES256", "cty": NOTATION_PAYLOAD, "crit": [_SCHEME], _SCHEME: "notary.x509",
                 _SIGNING_TIME: signing_time}
    chain = [base64.b64encode(key.certificate.public_bytes(serialization.Encoding.DER)).decode()]
    member = {"protected": protected, "header": {"x5c": chain, "io.cncf.notary.signingAgent":
                                                 "ultraplane-registry"}}
    jwk = ECKey.import_key(key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    envelope = jws.serialize_json(member, payload, jwk, registry=_NOTARY_REGISTRY)  # type: ignore[arg-type]
    return orjson.dumps(envelope)


def notation_manifest(envelope: bytes, subject: dict[str, Any], key: SigningKey, created: str) -> bytes:
    thumbprint = hashlib.sha256(key.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return orjson.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": NOTATION_ARTIFACT,
        "config": {"mediaType": EMPTY_TYPE, "digest": sha256(EMPTY_CONFIG), "size": len(EMPTY_CONFIG)},
        "layers": [{"mediaType": JOSE_TYPE, "digest": sha256(envelope), "size": len(envelope)}],
        "subject": subject,
        "annotations": {THUMBPRINT_ANNOTATION: orjson.dumps([thumbprint]).decode(),
                        "org.opencontainers.image.created": created},
    })


def verify_notation_envelope(ring: KeyRing, envelope: bytes, target: dict[str, Any]) -> str | None:
    """None if the JWS is signed by a registry key (found through its x5c leaf) and names `target`."""
    try:
        document = orjson.loads(envelope)
        chain = document["header"]["x5c"]
        leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0]))
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError, ValueError):
        return "the envelope is not a JWS with an x5c certificate chain"
    public = leaf.public_key()
    key = ring.key_for_public(public) if isinstance(public, ec.EllipticCurvePublicKey) else None
    if key is None:
        return "the envelope's certificate is not a registry signing key"
    jwk = ECKey.import_key(key.public_pem())
    try:
        verified = jws.deserialize_json(document, jwk, registry=_NOTARY_REGISTRY)
    except (JoseError, ValueError) as exc:
        return f"the JWS signature does not verify ({exc.__class__.__name__})"
    headers = verified.headers()
    if headers.get(_SCHEME) != "notary.x509" or headers.get("cty") != NOTATION_PAYLOAD:
        return "the envelope's protected header is not Notation's"
    try:
        signed_target = orjson.loads(verified.payload)["targetArtifact"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "the payload has no targetArtifact"
    for field in ("mediaType", "digest", "size"):
        if signed_target.get(field) != target.get(field):
            return f"the signature is for {signed_target.get('digest')}, not {target.get('digest')}"
    return None
