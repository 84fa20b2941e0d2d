"""TLS on the client port: server certificate, and client certificates with --client-cert-auth."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness import Recorder, ServerPair, TlsFiles, assert_steps_same, start_pair

J = ("-w", "json")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(path.with_suffix(".crt")), str(path.with_suffix(".key"))


def _issue(name: str, ca_cert: x509.Certificate | None, ca_key: ec.EllipticCurvePrivateKey | None,
           key: ec.EllipticCurvePrivateKey, *, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(ca_cert.subject if ca_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if ca_cert is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    return builder.sign(ca_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("pki")
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca = _issue("diff-ca", None, None, ca_key)
    files: dict[str, str] = {}
    files["ca"], _ = _write(base / "ca", ca, ca_key)
    files["server_cert"], files["server_key"] = _write(base / "server", _issue("server", ca, ca_key, server_key,
                                                                                server=True), server_key)
    files["client_cert"], files["client_key"] = _write(base / "client", _issue("client", ca, ca_key, client_key),
                                                       client_key)
    return files


def test_server_tls(pki: dict[str, str]) -> None:
    pair: ServerPair = start_pair(["--cert-file", pki["server_cert"], "--key-file", pki["server_key"]],
                                  TlsFiles(ca=pki["ca"]))
    try:
        def script(rec: Recorder) -> None:
            rec("put", "k", "v", *J)
            rec("get", "k", *J)
            # a client that doesn't trust the CA can't complete the handshake
            proc = rec.ctl.server.etcdctl("get", "k", "--print-value-only", tls_files=False,
                                          extra_global=["--dial-timeout=1s", "--command-timeout=2s"])
            rec.note("untrusted", (proc.returncode != 0, proc.stdout))

        steps = assert_steps_same(pair, script)
        # guard against both sides failing alike: over TLS, etcd itself must have served these
        assert steps[0][1][0] == 0 and steps[1][1][1]["kvs"][0]["value"] == "v", steps
        assert steps[2][1] == (True, ""), steps
    finally:
        pair.cleanup()


def test_client_cert_auth(pki: dict[str, str]) -> None:
    flags = ["--cert-file", pki["server_cert"], "--key-file", pki["server_key"],
             "--trusted-ca-file", pki["ca"], "--client-cert-auth"]
    pair = start_pair(flags, TlsFiles(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"]))
    try:
        def script(rec: Recorder) -> None:
            rec("put", "k", "v", *J)
            rec("get", "k", "--print-value-only")
            server = rec.ctl.server
            # no client certificate: refused (by the TLS handshake, so etcdctl times out either way)
            proc = server.etcdctl(f"--cacert={pki['ca']}", "get", "k", tls_files=False,
                                  extra_global=["--dial-timeout=1s", "--command-timeout=2s"])
            rec.note("no client cert", (proc.returncode, proc.stdout == ""))

        steps = assert_steps_same(pair, script)
        assert steps[0][1][0] == 0 and steps[1][1][1] == "v\n", steps
        assert steps[2][1][0] != 0, steps
    finally:
        pair.cleanup()
