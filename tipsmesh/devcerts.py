"""A development certificate authority and one certificate per mesh process.

`tips up` (and the tests) call ``ensure_mesh_certs(dir, names)``: the first
time, it creates a CA (EC P-256, ten years) and, for each name, a key and a
certificate the CA signs, with ``SAN = DNS:<name>``, usable both as a server
and as a client (each process is both). Keys are written 0600. Later runs
reuse what is there and issue only what is missing, so a restarted service
keeps its identity.

Files: ``ca.pem``, ``ca.key``, ``<name>.pem``, ``<name>.key``. Production
mounts certificates from its own CA instead (docs/security.md); nothing here
is read by a service except through ``TIPS_TLS_*`` settings.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kernel.settings import Settings

CA_NAME = "Tips mesh development CA"
_CA_DAYS = 3650
_LEAF_DAYS = 825


@dataclass(frozen=True)
class MeshIdentity:
    """Where one process's certificate and key are."""

    name: str
    cert_file: Path
    key_file: Path
    ca_file: Path

    def settings_env(self) -> dict[str, str]:
        """The ``TIPS_TLS_*`` variables naming these files (and no plaintext)."""
        return {
            "TIPS_TLS_CA_FILE": str(self.ca_file),
            "TIPS_TLS_CERT_FILE": str(self.cert_file),
            "TIPS_TLS_KEY_FILE": str(self.key_file),
            "TIPS_INSECURE": "false",
        }

    def settings(self) -> Settings:
        """Settings that make channels present this identity (tools, probes, tests)."""
        return Settings(
            insecure=False,
            tls_ca_file=str(self.ca_file),
            tls_cert_file=str(self.cert_file),
            tls_key_file=str(self.key_file),
        )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tips mesh (development)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _create_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / "ca.key", _key_pem(key))
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / 'ca.key'} is not an EC private key")
    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    return key, cert


def issue(
    directory: Path,
    name: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    days: int = _LEAF_DAYS,
) -> MeshIdentity:
    """Issue (overwrite) ``<name>.pem``/``<name>.key`` signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(directory / f"{name}.key", _key_pem(key))
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return identity(directory, name)


def identity(directory: Path, name: str) -> MeshIdentity:
    """The files of ``name`` in ``directory`` (not checked)."""
    return MeshIdentity(
        name=name,
        cert_file=directory / f"{name}.pem",
        key_file=directory / f"{name}.key",
        ca_file=directory / "ca.pem",
    )


def ensure_mesh_certs(directory: Path, names: Iterable[str]) -> dict[str, MeshIdentity]:
    """The CA and a certificate for each name, creating what is missing."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    if (directory / "ca.key").exists() and (directory / "ca.pem").exists():
        ca_key, ca_cert = _load_ca(directory)
    else:
        ca_key, ca_cert = _create_ca(directory)
    out: dict[str, MeshIdentity] = {}
    for name in names:
        found = identity(directory, name)
        if found.cert_file.exists() and found.key_file.exists() and _signed_by(found, ca_cert):
            out[name] = found
        else:
            out[name] = issue(directory, name, ca_key, ca_cert)
    return out


def _signed_by(found: MeshIdentity, ca_cert: x509.Certificate) -> bool:
    """Still valid and issued by this CA (a new CA reissues every leaf)."""
    try:
        cert = x509.load_pem_x509_certificate(found.cert_file.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
