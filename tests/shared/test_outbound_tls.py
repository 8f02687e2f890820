"""HTTPS through the guard: the socket goes to the checked address, TLS still speaks to the name."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.outbound import OutboundClient, OutboundNetworkError
from tests.conftest import make_settings
from tests.shared.test_outbound_client import FakeDns
from tests.shared.test_outbound_policy import UNUSED_DB
from tests.support.receivers import http_receiver


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    *,
    is_ca: bool,
    names: list[x509.GeneralName],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A throwaway CA, a server context for "hooks.test", and a client context trusting only the CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "outbound test CA")])
    ca = _certificate("outbound test CA", ca_key, ca_name, ca_key, is_ca=True, names=[])
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate(
        "hooks.test",
        leaf_key,
        ca_name,
        ca_key,
        is_ca=False,
        names=[x509.DNSName("hooks.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    directory: Path = tmp_path_factory.mktemp("tls")
    (directory / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "leaf.key").write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "leaf.pem", directory / "leaf.key")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


async def test_https_connects_to_the_checked_address_with_the_hostname_for_sni_and_host(tls):
    server_context, client_context = tls
    settings = make_settings(UNUSED_DB, outbound_allowlist=["hooks.test", "127.0.0.1"])
    dns = FakeDns(["127.0.0.1"])
    outbound = OutboundClient(settings, resolver=dns, ssl_context=client_context)
    try:
        with http_receiver([(204, {}, 0.0)], tls=server_context) as receiver:
            response = await outbound.request("POST", f"https://hooks.test:{receiver.port}/in", content=b"{}")
    finally:
        await outbound.aclose()
    assert response.status_code == 204
    assert receiver.server_names == ["hooks.test"]
    [seen] = receiver.requests
    assert seen.headers["host"] == f"hooks.test:{receiver.port}"


async def test_certificate_is_verified_against_the_hostname_not_the_address(tls):
    # The certificate is valid for 127.0.0.1 and hooks.test, not for other.test: dialling
    # 127.0.0.1 must not make a certificate for the address acceptable for the name.
    server_context, client_context = tls
    settings = make_settings(UNUSED_DB, outbound_allowlist=["other.test", "127.0.0.1"])
    outbound = OutboundClient(settings, resolver=FakeDns(["127.0.0.1"]), ssl_context=client_context)
    try:
        with http_receiver([(204, {}, 0.0)], tls=server_context) as receiver:
            with pytest.raises(OutboundNetworkError) as raised:
                await outbound.request("GET", f"https://other.test:{receiver.port}/")
    finally:
        await outbound.aclose()
    assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)
    assert receiver.requests == []
