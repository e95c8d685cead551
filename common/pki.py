"""A small certificate authority for one Serpens cluster (the `cryptography` package).

Identity scheme (common/auth.py reads it back): a certificate's subject **CN is the
identity's name** (a user, `serpens-controller`, a node) and its **O (organization) is its
role**: `viewer`, `operator`, `admin`, `controller` (the controller's identity, the only one
the Agent and Gateway services accept), `agent` (an agent's identity), `gateway` (a
gateway's) or `etcd` (etcd's server). Only the
cluster CA signs certificates, so a role is as trustworthy as the CA key (keep ca.key on the
machine that issues certificates, mode 0600).

Keys are ECDSA P-256 (fast to make, accepted by gRPC and etcd). Every certificate may act
as server and client (the controller serves the API and calls agents with one identity);
`hosts` become its DNS/IP subject alternative names, which clients check for servers.
Files are written with mode 0600 (certificates too: one rule for the whole directory).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("viewer", "operator", "admin", "controller", "agent", "gateway", "etcd")
CA_DAYS, CERT_DAYS = 3650, 825


@dataclass(frozen=True)
class Identity:
    """Where one identity's files are: the CA certificate to trust, its certificate and key."""
    ca: str
    cert: str
    key: str


def write_private(path: str, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 from the start (never readable by others)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _name(cn: str, role: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if role:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, role))
    return x509.Name(attrs)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class CA:
    """The CA in `directory` (ca.crt, ca.key): `CA.create(dir)` or `CA(dir)` for an existing one."""

    def __init__(self, directory: str):
        self.dir = directory
        self.cert_path = os.path.join(directory, "ca.crt")
        with open(self.cert_path, "rb") as f:
            self._cert = x509.load_pem_x509_certificate(f.read())
        with open(os.path.join(directory, "ca.key"), "rb") as f:
            self._key = serialization.load_pem_private_key(f.read(), None)

    @classmethod
    def create(cls, directory: str, name: str = "serpens-ca") -> CA:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .sign(key, hashes.SHA256()))
        write_private(os.path.join(directory, "ca.key"), _key_pem(key))
        write_private(os.path.join(directory, "ca.crt"), cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory)

    def issue(self, name: str, role: str, hosts: tuple[str, ...] | list[str] = (),
              out_dir: str | None = None, days: int = CERT_DAYS) -> Identity:
        """A key and a certificate for `name` with `role`, written to out_dir/NAME.{key,crt}."""
        if role not in ROLES:
            raise ValueError(f"role: one of {', '.join(ROLES)}, got {role!r}")
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"name: a plain file name is required, got {name!r}")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(_name(name, role))
                   .issuer_name(self._cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]),
                                  critical=False))
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(h) for h in dict.fromkeys(hosts)]),
                critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        out_dir = out_dir or self.dir
        key_path, cert_path = os.path.join(out_dir, f"{name}.key"), os.path.join(out_dir, f"{name}.crt")
        write_private(key_path, _key_pem(key))
        write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return Identity(self.cert_path, cert_path, key_path)


def subject(cert_pem: bytes) -> tuple[str, str]:
    """(CN, O) of a PEM certificate; "" for a missing attribute."""
    name = x509.load_pem_x509_certificate(cert_pem).subject

    def first(oid):
        values = name.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""
    return first(NameOID.COMMON_NAME), first(NameOID.ORGANIZATION_NAME)
