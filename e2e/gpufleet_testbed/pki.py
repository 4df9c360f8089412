"""Certificates and keys for one control plane.

One CA signs the API server's serving certificate and every client
certificate; the API server trusts that CA for client authentication, so each
component is a real, RBAC-checked user instead of an anonymous one.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# ECDSA keys: generating RSA keys costs seconds on a 2-core machine.
_CURVE = ec.SECP256R1()
_VALIDITY = datetime.timedelta(days=30)

SERVICE_IP = "10.96.0.1"
FRONT_PROXY_CLIENT = "front-proxy-client"  # first address of the service range the API server gets
API_SERVER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: CertPair
    apiserver: CertPair
    admin: CertPair
    controller_manager: CertPair
    scheduler: CertPair
    kwok: CertPair
    front_proxy_ca: CertPair
    front_proxy_client: CertPair
    service_account_key: Path
    service_account_pub: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated so a slightly skewed clock does not reject a fresh cert.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


def _issue(
    directory: Path,
    stem: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> CertPair:
    key = ec.generate_private_key(_CURVE)
    builder = (
        _builder(subject, ca_name, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pair = CertPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return pair


def _ca(
    directory: Path, stem: str, common_name: str
) -> tuple[CertPair, ec.EllipticCurvePrivateKey, x509.Name]:
    ca_key = ec.generate_private_key(_CURVE)
    ca_name = _name(common_name)
    ca_cert = (
        _builder(ca_name, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .sign(ca_key, hashes.SHA256())
    )
    ca = CertPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    ca.cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, ca.key)
    return ca, ca_key, ca_name


def generate(directory: Path) -> Pki:
    """Writes a fresh PKI into `directory` (a new one per `up`, never reused)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key, ca_name = _ca(directory, "ca", "gpufleet-testbed-ca")
    # A separate CA for the aggregation layer's request-header authentication,
    # as kubeadm does: controllers and the scheduler read it from the
    # extension-apiserver-authentication ConfigMap and complain when it is empty.
    front_proxy_ca, proxy_key, proxy_name = _ca(directory, "front-proxy-ca", "front-proxy-ca")

    server_sans: list[x509.GeneralName] = [x509.DNSName(n) for n in API_SERVER_NAMES]
    server_sans += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address(SERVICE_IP)),
    ]
    server = ExtendedKeyUsageOID.SERVER_AUTH
    client = ExtendedKeyUsageOID.CLIENT_AUTH

    # The service-account key pair signs and verifies bound tokens; it is
    # separate from the CA so a leaked token key cannot mint certificates.
    sa_key = ec.generate_private_key(_CURVE)
    sa_key_path = directory / "sa.key"
    sa_pub_path = directory / "sa.pub"
    _write_key(sa_key, sa_key_path)
    sa_pub_path.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    return Pki(
        ca=ca,
        apiserver=_issue(
            directory, "apiserver", ca_key, ca_name, _name("kube-apiserver"), server, server_sans
        ),
        admin=_issue(
            directory, "admin", ca_key, ca_name, _name("gpufleet-admin", "system:masters"), client
        ),
        # The bootstrap RBAC policy binds these exact user names.
        controller_manager=_issue(
            directory,
            "controller-manager",
            ca_key,
            ca_name,
            _name("system:kube-controller-manager"),
            client,
        ),
        scheduler=_issue(
            directory, "scheduler", ca_key, ca_name, _name("system:kube-scheduler"), client
        ),
        # kwok writes status of nodes and pods and deletes pods: it plays every
        # kubelet at once, which no narrower built-in role covers.
        kwok=_issue(
            directory, "kwok", ca_key, ca_name, _name("kwok-controller", "system:masters"), client
        ),
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=_issue(
            directory,
            "front-proxy-client",
            proxy_key,
            proxy_name,
            _name(FRONT_PROXY_CLIENT),
            client,
        ),
        service_account_key=sa_key_path,
        service_account_pub=sa_pub_path,
    )
