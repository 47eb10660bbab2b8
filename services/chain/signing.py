"""Ed25519 signing of notifications, with a key ring that rotates.

What is signed (docs/transformers.md): `signed_message(format, payload)`, the bytes
`herald.notification.v1\\n` + format + `\\n` + the payload after format conversion and before
compression. The format is inside the signature, so a protobuf payload cannot pass as JSON.

The ring is a directory: `<key id>.pem` is a private key (PKCS#8 PEM, unencrypted) that may sign
and verifies; `<key id>.pub.pem` a public key that only verifies (a key being introduced, or
one being retired whose private half is already destroyed). Every key in it is published by
GetSigningKeys; the active one (HERALD_CHAIN_SIGNING_KEY, or else the private key whose id sorts
last) signs. Deleting a key's files retires it. `reload` re-reads the directory.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.config import StartupError

log = logging.getLogger(__name__)

ALGORITHM = "ed25519"
CONTEXT = b"herald.notification.v1\n"
SIGNATURE_BYTES = 64
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DEV_KEYS_DIR = "dev-notification-keys"


def signed_message(fmt: str, payload: bytes) -> bytes:
    """The exact bytes a delivery's signature is over."""
    return b"".join((CONTEXT, fmt.encode(), b"\n", payload))


@dataclass(frozen=True, slots=True)
class RingKey:
    key_id: str
    public: Ed25519PublicKey
    private: Ed25519PrivateKey | None = None

    @property
    def public_bytes(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class KeyRing:
    """The node's signing keys: one active (signs), all of them published (verify)."""

    def __init__(self, keys: list[RingKey], active: str = "") -> None:
        self._keys = {key.key_id: key for key in keys}
        self._pinned = active
        self.active: RingKey | None = self._pick(active)

    @classmethod
    def empty(cls) -> KeyRing:
        return cls([])

    def _pick(self, active: str) -> RingKey | None:
        if active:
            key = self._keys.get(active)
            if key is None or key.private is None:
                raise StartupError(
                    f"HERALD_CHAIN_SIGNING_KEY names {active!r}, which has no private key in the "
                    "signing keys directory"
                )
            return key
        signers = sorted(k for k, key in self._keys.items() if key.private is not None)
        return self._keys[signers[-1]] if signers else None

    @property
    def keys(self) -> list[RingKey]:
        return [self._keys[k] for k in sorted(self._keys)]

    def get(self, key_id: str) -> RingKey | None:
        return self._keys.get(key_id)

    def sign(self, message: bytes) -> tuple[str, bytes]:
        """(key id, signature) by the active key."""
        active = self.active
        if active is None or active.private is None:
            raise RuntimeError("this node has no signing key")
        return active.key_id, active.private.sign(message)

    def replace(self, other: KeyRing) -> None:
        """Takes `other`'s keys (a reload)."""
        self._keys = other._keys
        self._pinned = other._pinned
        self.active = other.active


def load_dir(directory: Path, active: str = "") -> KeyRing:
    """The ring in `directory` (see the module docstring).

    Raises:
        StartupError: a file that is not an Ed25519 key, a bad key id, or a pinned key missing.
    """
    keys: dict[str, RingKey] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise StartupError(
            f"cannot read the signing keys directory {directory}: {exc.strerror}"
        ) from None
    for name in names:
        if name.endswith(".pub.pem"):
            key_id, public_only = name[: -len(".pub.pem")], True
        elif name.endswith(".pem"):
            key_id, public_only = name[: -len(".pem")], False
        else:
            continue
        if not _KEY_ID.match(key_id):
            raise StartupError(
                f"signing key file {name!r}: a key id is 1-64 letters, digits, '.', '_' or '-'"
            )
        data = (directory / name).read_bytes()
        try:
            if public_only:
                public = serialization.load_pem_public_key(data)
                if not isinstance(public, Ed25519PublicKey):
                    raise TypeError
                if key_id not in keys:
                    keys[key_id] = RingKey(key_id, public)
            else:
                private = serialization.load_pem_private_key(data, password=None)
                if not isinstance(private, Ed25519PrivateKey):
                    raise TypeError
                keys[key_id] = RingKey(key_id, private.public_key(), private)
        except (ValueError, TypeError):
            raise StartupError(
                f"signing key file {name!r} is not an unencrypted Ed25519 PEM key"
            ) from None
    return KeyRing(list(keys.values()), active)


def write_private_key(directory: Path, key_id: str) -> Path:
    """Generates a key into `directory` as `<key_id>.pem` (mode 0600); for operators and dev."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key_id}.pem"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written aside, then linked into place: a reader never sees half a key, and a key that
    # exists already is never replaced (FileExistsError).
    partial = directory / f".{key_id}.{os.getpid()}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        os.link(partial, path)
    finally:
        partial.unlink()
    return path


def dev_ring(data_dir: Path) -> KeyRing:
    """Dev mode without a configured directory: a key generated once in the data dir."""
    directory = data_dir / DEV_KEYS_DIR
    if not directory.exists() or not any(directory.glob("*.pem")):
        try:
            write_private_key(directory, "dev-1")
            log.info("generated a dev notification signing key", extra={"path": str(directory)})
        except FileExistsError:  # another worker made it at the same moment
            time.sleep(0.2)
    return load_dir(directory)


def verify(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True
