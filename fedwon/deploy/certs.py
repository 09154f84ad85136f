"""TLS material for a SuperLink: a private certificate authority and a server certificate it signs.

Flower's SuperLink serves the Fleet API (SuperNodes, gRPC) and the HTTP API (``flwr`` CLI) with
one certificate; SuperNodes and the CLI trust it through the CA certificate (``ca.crt``), so the
CA is the only file that travels to client machines. The server certificate must name every
address clients dial as a subject alternative name (SAN): gRPC checks the SAN, not the common
name, and a missing SAN shows up only as endless "Connection attempt failed" on the SuperNode.

Keys are ECDSA P-384, made with ``cryptography`` (a Flower dependency), so no ``openssl`` binary
is needed. Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedwon.deploy.errors import DeployError
from fedwon.deploy.files import refuse_existing, write_private

# What a SuperLink on this machine is dialled as; real deployments add their host names / IPs.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DNS_NAME = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"


@dataclass(frozen=True)
class Certificates:
    """Paths of the generated files (all in one directory)."""

    ca_cert: Path  # give to every SuperNode (--root-certificates) and the flwr CLI connection
    ca_key: Path  # keep offline: it signs server certificates
    server_cert: Path  # SuperLink --ssl-certfile
    server_key: Path  # SuperLink --ssl-keyfile

    @classmethod
    def in_directory(cls, directory: Path) -> Certificates:
        return cls(
            directory / CA_CERT, directory / CA_KEY, directory / SERVER_CERT, directory / SERVER_KEY
        )


def subject_alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """IP addresses as IP SANs, everything else as DNS names (gRPC matches each kind apart)."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip() for h in hosts):
        if _is_ip(host):
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        elif DNS_NAME.fullmatch(host):
            names.append(x509.DNSName(host))
        else:
            raise DeployError(f"invalid host {host!r}: give a DNS name or an IP address")
    return names


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    # Start a minute early: machines whose clocks differ slightly still accept the certificate.
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(minutes=1), now + datetime.timedelta(days=days)


def make_ca(days: int = 3650) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign server certificates (and nothing below them)."""
    key = _new_key()
    start, end = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedwon deployment CA"))
        .issuer_name(_name("fedwon deployment CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .sign(key, hashes.SHA384())
    )
    return cert, key


def make_server_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: Sequence[str] = LOCAL_HOSTS,
    days: int = 825,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS server certificate for ``hosts`` (its SANs), signed by the CA."""
    if not hosts:
        raise DeployError("a server certificate needs at least one host name or IP address")
    key = _new_key()
    start, end = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(subject_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return cert, key


def make_certificates(
    directory: str | Path, hosts: Sequence[str] = LOCAL_HOSTS, days: int = 825
) -> Certificates:
    """Write ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key`` into ``directory``."""
    files = Certificates.in_directory(Path(directory))
    refuse_existing(vars(files).values())
    subject_alt_names(hosts)  # refuse a bad host before creating anything
    files.ca_cert.parent.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca()
    cert, key = make_server_certificate(ca_cert, ca_key, hosts, days)
    pem = serialization.Encoding.PEM
    no_password = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8
    files.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    write_private(files.ca_key, ca_key.private_bytes(pem, pkcs8, no_password))
    files.server_cert.write_bytes(cert.public_bytes(pem))
    write_private(files.server_key, key.private_bytes(pem, pkcs8, no_password))
    return files
