"""The TLS material of a `--tls` stack: its own CA and one server certificate.

Made with `cryptography` at the first `up` of a state dir, kept in
`<state-dir>/tls/` and reused at every later start (a restarted part keeps
trusting the same CA).  The server certificate names 127.0.0.1 and
localhost, the only addresses the stack listens on, so every client can use
`sslmode=verify-full`.  `msdb down --purge` deletes it with the state dir.

    ca.key     CA private key (0600; never leaves the state dir)
    ca.crt     CA certificate: every client's sslrootcert
    server.key server private key (0600; copied for the PostgreSQL user)
    server.crt server certificate, signed by the CA
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InfraError

__all__ = ["TlsFiles", "ensure_tls"]

VALID_DAYS = 825          # a stack that lives longer is started --fresh
SERVER_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    dir: Path

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"


def ensure_tls(directory: Path) -> TlsFiles:
    """The CA and server certificate in `directory`, made if missing."""
    files = TlsFiles(Path(directory).resolve())
    if all(p.exists() for p in (files.ca_key, files.ca_cert, files.server_key, files.server_cert)):
        return files
    try:
        from cryptography import x509
    except ImportError:
        raise InfraError("--tls makes the stack's CA with the cryptography package: "
                         "pip install cryptography") from None
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    files.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(files.dir, 0o700)
    now = dt.datetime.now(dt.timezone.utc)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=VALID_DAYS)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "msdb"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"msdb stack CA {files.dir}"[:64])])
    ca_cert = (x509.CertificateBuilder()
               .subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                              critical=False)
               .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n)
            for n in SERVER_NAMES]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "msdb"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))

    def key_pem(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    _write(files.ca_key, key_pem(ca_key), 0o600)
    _write(files.server_key, key_pem(key), 0o600)
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)
