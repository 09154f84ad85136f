"""Generated TLS material: SANs, signatures, permissions, and a real TLS handshake on loopback."""

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedwon.deploy.certs import LOCAL_HOSTS, make_certificates, subject_alt_names
from fedwon.deploy.errors import DeployError


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_server_certificate_names_loopback_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    files = make_certificates(tmp_path, [*LOCAL_HOSTS, "server.example.org", "10.0.0.5"])
    ca, server = load(files.ca_cert), load(files.server_cert)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "server.example.org"}
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "::1",
        "10.0.0.5",
    }
    assert server.issuer == ca.subject
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    ca_key.verify(
        server.signature,
        server.tbs_certificate_bytes,
        ec.ECDSA(server.signature_hash_algorithm),  # type: ignore[arg-type]
    )
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_private_keys_are_owner_only_and_nothing_is_overwritten(tmp_path: Path) -> None:
    files = make_certificates(tmp_path)
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = files.ca_cert.read_bytes()
    with pytest.raises(DeployError, match=r"ca\.crt.* already exist; choose an empty directory"):
        make_certificates(tmp_path)
    assert files.ca_cert.read_bytes() == before


@pytest.mark.parametrize("host", ["bad host", "a/b", "-x.org", ""])
def test_a_bad_host_is_refused_before_anything_is_written(tmp_path: Path, host: str) -> None:
    with pytest.raises(DeployError, match="give a DNS name or an IP address"):
        make_certificates(tmp_path / "c", ["localhost", host])
    assert not (tmp_path / "c").exists()


def test_ip_and_dns_names_are_told_apart() -> None:
    names = subject_alt_names(["::1", "localhost", "127.0.0.1", "localhost"])
    assert [type(n).__name__ for n in names] == ["IPAddress", "DNSName", "IPAddress"]


def handshake(files_dir: Path, ca: Path, server_name: str) -> str:
    """Serve TLS with the generated server certificate; a client trusting ``ca`` connects."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files_dir / "server.pem", files_dir / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            return tls.recv(2).decode()
    finally:
        thread.join(5)
        listener.close()


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
def test_a_client_trusting_the_ca_completes_a_tls_handshake(tmp_path: Path, name: str) -> None:
    files = make_certificates(tmp_path)
    assert handshake(tmp_path, files.ca_cert, name) == "ok"


def test_a_client_trusting_another_ca_or_dialling_another_name_is_refused(
    tmp_path: Path,
) -> None:
    files = make_certificates(tmp_path / "a")
    other = make_certificates(tmp_path / "b")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        handshake(tmp_path / "a", other.ca_cert, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(tmp_path / "a", files.ca_cert, "server.example.org")
