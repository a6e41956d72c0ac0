"""https on the local network, for a laptop notebook and a phone on the same Wi-Fi.

A phone's browser gives a page WebGPU only in a secure context, and plain http on
``192.168.x.y`` is not one.  So the broker also serves https on the LAN address, with a
certificate made for this session: self-signed (no authority would sign a private
address), so the phone warns once and the user proceeds.  The SHA-256 fingerprint shown
in the notebook is what the phone's certificate details must show.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import tempfile
from dataclasses import dataclass

from ..errors import TunnelError

VALID_FOR = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Certificate:
    """A session's server-side TLS context (certificate and key loaded) and the certificate's fingerprint."""

    context: ssl.SSLContext
    fingerprint: str  # SHA-256, colon-separated hex: what a browser's certificate viewer shows


def lan_address() -> str:
    """This machine's address on its local network: where a packet to the LAN would leave from.

    Connecting a UDP socket sends nothing; it only asks the routing table for the source
    address, so this works offline and touches no other machine.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.254.254.254", 9))
            address = str(probe.getsockname()[0])
        except OSError:
            address = ""
    if not address or ipaddress.ip_address(address).is_loopback or address == "0.0.0.0":
        raise TunnelError("this machine has no local network address: join the Wi-Fi the phone is on, then start again")
    return address


def make_certificate(address: str) -> Certificate:
    """A self-signed certificate for ``address`` (an IP or a host name), valid for a week.

    The key exists on disk only while :mod:`ssl` loads it (it reads files only), in a
    directory only this user can enter, removed at once.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise TunnelError(
            "--lan makes a certificate with the cryptography package: pip install 'webnet-magic[lan]' "
            "(or pip install cryptography), then %webnet stop and %webnet start --lan"
        ) from None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"webnet_magic session on {address}")])
    try:
        alternative: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        alternative = x509.DNSName(address)
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.SubjectAlternativeName([alternative]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private = tempfile.mkdtemp(prefix="webnet-lan-")  # 0700
    try:
        certfile, keyfile = os.path.join(private, "cert.pem"), os.path.join(private, "key.pem")
        _write_private(certfile, certificate.public_bytes(serialization.Encoding.PEM))
        _write_private(keyfile, key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    digest = certificate.fingerprint(hashes.SHA256()).hex().upper()
    return Certificate(context, ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)))


def _write_private(path: str, data: bytes) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
        file.write(data)
