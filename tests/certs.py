"""A throwaway PKI for the TLS tests, made with `cryptography`: two CAs that know nothing of
each other, a broker certificate for 127.0.0.1/localhost, one with the wrong name, and
client certificates from each CA.

    pki = make_pki(tmp_path / "pki")
    pki.ca, pki.server_cert, pki.server_key, pki.client_cert, pki.client_key,
    pki.rogue_cert, pki.rogue_key (signed by pki.rogue_ca), pki.wrong_name_cert/_key
    cert, key = client_pair(pki, "gw-1")      # another client certificate from pki.ca

EC P-256 keys: quick to generate, and every OpenSSL that Mosquitto links accepts them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("127.0.0.1", "localhost")


@dataclass
class Issuer:
    """A CA: its key and self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


@dataclass
class Pki:
    """Paths of the PEM files written by `make_pki`."""

    ca: Path
    server_cert: Path
    server_key: Path
    wrong_name_cert: Path  # signed by `ca`, but for a host name we never connect to
    wrong_name_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path  # an unrelated CA
    rogue_cert: Path  # a client certificate signed by `rogue_ca`, same subject as client_cert
    rogue_key: Path
    issuer: Issuer  # the key behind `ca`, for more client certificates (client_pair)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
             ) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))  # clock skew between tools
            .not_valid_after(now + dt.timedelta(days=2)))


def make_ca(common_name: str) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(common_name, _name(common_name), key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Issuer(key, cert)


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue(ca: Issuer, common_name: str, *, names: tuple[str, ...] = (),
          server: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by `ca`: a server one (with `names` as SANs) or a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (_builder(common_name, ca.cert.subject, key)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.key.public_key()), critical=False))
    if names:
        builder = builder.add_extension(_san(names), critical=False)
    return builder.sign(ca.key, hashes.SHA256()), key


def _write(directory: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey | None = None) -> tuple[Path, Path | None]:
    cert_path = directory / f"{stem}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is None:
        return cert_path, None
    key_path = directory / f"{stem}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)  # as a real deployment keeps it
    return cert_path, key_path


def make_pki(directory: Path) -> Pki:
    """Write every file of the test PKI under `directory` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, rogue = make_ca("edge test CA"), make_ca("rogue CA")
    ca_path, _ = _write(directory, "ca", ca.cert)
    rogue_path, _ = _write(directory, "rogue-ca", rogue.cert)
    server = _write(directory, "server", *issue(ca, "broker", names=SERVER_NAMES, server=True))
    wrong = _write(directory, "wrong-name", *issue(ca, "elsewhere", names=("elsewhere.invalid",),
                                                   server=True))
    client = _write(directory, "client", *issue(ca, "edge-gw-test"))
    rogue_client = _write(directory, "rogue-client", *issue(rogue, "edge-gw-test"))
    return Pki(ca=ca_path, server_cert=server[0], server_key=server[1],
               wrong_name_cert=wrong[0], wrong_name_key=wrong[1],
               client_cert=client[0], client_key=client[1], rogue_ca=rogue_path,
               rogue_cert=rogue_client[0], rogue_key=rogue_client[1], issuer=ca)


def client_pair(pki: Pki, common_name: str) -> tuple[Path, Path]:
    """(certificate, key) files of a client certificate for `common_name`, signed by pki.ca;
    with Mosquitto's use_identity_as_username, `common_name` is the MQTT user name."""
    cert, key = _write(pki.ca.parent, f"client-{common_name}",
                       *issue(pki.issuer, common_name))
    assert key is not None
    return cert, key
