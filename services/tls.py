"""A node's TLS material: read and checked once at start-up, then handed to grpc.

Every problem with the files (missing, unreadable, not PEM, an encrypted key, a key that does
not belong to the certificate, an expired certificate) is a `StartupError` naming the setting
and what to do, before anything listens; grpc itself would only fail to bind, or fail every
handshake later. Key material is never logged.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from services.config import StartupError, TLSSettings

# The grpc auth-context property a verified client certificate shows up in.
PEER_CERTIFICATE = "x509_pem_cert"


@dataclass(frozen=True)
class NodeTLS:
    """What a node serves and presents: PEM bytes, checked."""

    key: bytes
    chain: bytes
    # Client certificates on the node listener are verified against this (mTLS); None: off.
    client_ca: bytes | None
    # Other nodes' certificates are verified against this; None: the system roots.
    peer_ca: bytes | None
    client_key: bytes
    client_chain: bytes

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def server_credentials(self) -> grpc.ServerCredentials:
        """The public listener: TLS, no client certificate asked for."""
        return grpc.ssl_server_credentials([(self.key, self.chain)])

    def node_server_credentials(self) -> grpc.ServerCredentials:
        """The node-to-node listener: with a client CA, a verified client certificate is
        required to connect at all."""
        if self.client_ca is None:
            return self.server_credentials()
        return grpc.ssl_server_credentials(
            [(self.key, self.chain)], root_certificates=self.client_ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For calls to other nodes: verify them, present this node's client certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.peer_ca,
            private_key=self.client_key,
            certificate_chain=self.client_chain,
        )


def load(settings: TLSSettings) -> NodeTLS | None:
    """The node's TLS material, or None when TLS is off.

    Raises:
        StartupError: the settings are incomplete or a file is unusable.
    """
    if not settings.enabled:
        needing = [
            name
            for name, value in (
                ("HERALD_TLS_CLIENT_CA_FILE", settings.client_ca_file),
                ("HERALD_TLS_CA_FILE", settings.ca_file),
                ("HERALD_TLS_CLIENT_CERT_FILE", settings.client_cert_file),
                ("HERALD_TLS_CLIENT_KEY_FILE", settings.client_key_file),
            )
            if value is not None
        ]
        if needing:
            raise StartupError(
                f"{', '.join(needing)} is set but TLS is off: set HERALD_TLS_CERT_FILE and "
                "HERALD_TLS_KEY_FILE (this node's certificate and key) as well"
            )
        return None
    chain, key = _pair(
        settings.cert_file, "HERALD_TLS_CERT_FILE", settings.key_file, "HERALD_TLS_KEY_FILE"
    )
    client_chain, client_key = chain, key
    if settings.client_cert_file is not None or settings.client_key_file is not None:
        client_chain, client_key = _pair(
            settings.client_cert_file,
            "HERALD_TLS_CLIENT_CERT_FILE",
            settings.client_key_file,
            "HERALD_TLS_CLIENT_KEY_FILE",
        )
    return NodeTLS(
        key=key,
        chain=chain,
        client_ca=_bundle(settings.client_ca_file, "HERALD_TLS_CLIENT_CA_FILE"),
        peer_ca=_bundle(settings.ca_file, "HERALD_TLS_CA_FILE"),
        client_key=client_key,
        client_chain=client_chain,
    )


def _read(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartupError(
            f"cannot read {name} ({path}): {exc.strerror or type(exc).__name__}"
        ) from None


def _certificates(data: bytes, path: Path, name: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise StartupError(
            f"{name} ({path}) holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )
    return certificates


def _private_key(data: bytes, path: Path, name: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise StartupError(
            f"{name} ({path}) is encrypted: give Herald the key without a passphrase "
            "(e.g. `openssl pkey -in KEY -out KEY.plain`), readable only by its user"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise StartupError(f"{name} ({path}) holds no PEM private key") from None


def _spki(key: object) -> bytes:
    public_bytes = key.public_bytes  # type: ignore[attr-defined]
    result: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return result


def _pair(
    cert_file: Path | None, cert_name: str, key_file: Path | None, key_name: str
) -> tuple[bytes, bytes]:
    """(chain, key) PEM bytes, checked to belong together and to be valid now."""
    if cert_file is None or key_file is None:
        given, missing = (cert_name, key_name) if key_file is None else (key_name, cert_name)
        raise StartupError(f"{given} is set without {missing}: a certificate needs its key")
    chain = _read(cert_file, cert_name)
    key = _read(key_file, key_name)
    leaf = _certificates(chain, cert_file, cert_name)[0]
    private_key = _private_key(key, key_file, key_name)
    if _spki(private_key.public_key()) != _spki(leaf.public_key()):
        raise StartupError(
            f"{key_name} ({key_file}) does not belong to the certificate in {cert_name} "
            f"({cert_file}): their public keys differ. Give the key the certificate was issued for"
        )
    now = datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc <= now:
        raise StartupError(
            f"the certificate in {cert_name} ({cert_file}) expired on "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: renew it"
        )
    if leaf.not_valid_before_utc > now:
        raise StartupError(
            f"the certificate in {cert_name} ({cert_file}) is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is the clock right?)"
        )
    return chain, key


def _bundle(path: Path | None, name: str) -> bytes | None:
    if path is None:
        return None
    data = _read(path, name)
    _certificates(data, path, name)
    return data
