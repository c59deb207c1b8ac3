"""Encryption at rest for private keys kept in the store (the CA key, edge keys).

The store never holds a private key in the clear. Keys are sealed with
AES-256-GCM under one 32-byte *store key*, found in this order:

1. `MESHGATE_CA_KEY`: the key itself, base64 of 32 random bytes
   (`openssl rand -base64 32`);
2. `MESHGATE_CA_KEY_FILE`: a file holding that base64 text;
3. for SQLite only, the file `<database>.key` beside the database, created
   with mode 0600 by `meshgate init`.

PostgreSQL (any non-SQLite URL) needs 1 or 2: there is no "beside".

A sealed blob is `b"MGK1" + key id (4 bytes) + nonce (12) + ciphertext+tag`.
The key id (first 4 bytes of SHA-256 of the key) lets a wrong key be named as
such ("sealed with key 1a2b3c4d, this key is 5e6f7a8b") instead of a bare
"decryption failed".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshgate.ca.errors import CaKeyError

ENV_KEY = "MESHGATE_CA_KEY"
ENV_KEY_FILE = "MESHGATE_CA_KEY_FILE"
KEY_BYTES = 32
_MAGIC = b"MGK1"
_NONCE = 12


@dataclass(frozen=True)
class KeyBox:
    """Seals and opens private keys with the store key. `source` says where the key came from."""

    key: bytes = field(repr=False)
    source: str

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.key).hexdigest()[:8]

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        kid = bytes.fromhex(self.key_id)
        return _MAGIC + kid + nonce + AESGCM(self.key).encrypt(nonce, plaintext, _MAGIC + kid)

    def decrypt(self, blob: bytes) -> bytes:
        if not blob or not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + 4 + _NONCE + 16:
            raise CaKeyError("cannot sign: the stored key is not in meshgate's sealed format")
        kid = blob[4:8]
        nonce = blob[8 : 8 + _NONCE]
        if kid.hex() != self.key_id:
            raise CaKeyError(
                f"cannot sign: wrong encryption key ({self.source}): the CA key was sealed "
                f"with key {kid.hex()}, this key is {self.key_id}"
            )
        try:
            return AESGCM(self.key).decrypt(nonce, blob[8 + _NONCE :], _MAGIC + kid)
        except InvalidTag as exc:
            raise CaKeyError(
                f"cannot sign: the CA key does not decrypt with the key from {self.source} "
                "(wrong key or damaged data)"
            ) from exc


def generate_key() -> bytes:
    return os.urandom(KEY_BYTES)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def parse_key(text: str, source: str) -> bytes:
    """Base64 of exactly 32 bytes, surrounding whitespace ignored."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CaKeyError(
            f"cannot sign: {source} is not base64 (expected 32 random bytes, "
            "e.g. `openssl rand -base64 32`)"
        ) from exc
    if len(raw) != KEY_BYTES:
        raise CaKeyError(
            f"cannot sign: {source} holds {len(raw)} bytes, expected {KEY_BYTES} "
            "(e.g. `openssl rand -base64 32`)"
        )
    return raw


def key_file_for(db_url: str) -> Path | None:
    """`<database>.key` for a SQLite file URL; None for other databases."""
    from meshgate.store.db import sqlite_path

    path = sqlite_path(db_url)
    return None if path is None else path.with_name(path.name + ".key")


def _read_key_file(path: Path) -> KeyBox:
    source = f"key file {path}"
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise CaKeyError(f"cannot sign: the CA encryption key file {path} does not exist") from exc
    except OSError as exc:
        raise CaKeyError(f"cannot sign: cannot read the CA encryption key file {path}: {exc}") from exc
    return KeyBox(parse_key(text, source), source)


def load_keybox(db_url: str) -> KeyBox:
    """The store key for `db_url` (env, env file, or `<db>.key`); CaKeyError if none."""
    env = os.environ.get(ENV_KEY)
    if env:
        return KeyBox(parse_key(env, ENV_KEY), ENV_KEY)
    env_file = os.environ.get(ENV_KEY_FILE)
    if env_file:
        return _read_key_file(Path(env_file))
    path = key_file_for(db_url)
    if path is None:
        raise CaKeyError(
            f"cannot sign: no CA encryption key: set {ENV_KEY} (base64 of 32 bytes) or "
            f"{ENV_KEY_FILE} (needed for non-SQLite databases)"
        )
    if not path.exists():
        raise CaKeyError(
            f"cannot sign: no CA encryption key: {ENV_KEY} is not set and the key file "
            f"{path} does not exist"
        )
    return _read_key_file(path)


def _write_new_key_file(path: Path) -> KeyBox:
    key = generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask says
        os.write(fd, (encode_key(key) + "\n").encode("ascii"))
    finally:
        os.close(fd)
    return KeyBox(key, f"key file {path}")


def key_file_path(db_url: str) -> Path | None:
    """The key file `create_keybox` would use; None when the key comes from MESHGATE_CA_KEY."""
    if os.environ.get(ENV_KEY):
        return None
    env_file = os.environ.get(ENV_KEY_FILE)
    return Path(env_file) if env_file else key_file_for(db_url)


def create_keybox(db_url: str) -> KeyBox:
    """At `meshgate init`: the configured key, or a new key file (mode 0600).

    An existing key file is reused (it may hold keys of other stores); a new
    one is written only where none exists.
    """
    if os.environ.get(ENV_KEY):
        return load_keybox(db_url)
    path = key_file_path(db_url)
    if path is None:
        raise CaKeyError(
            f"cannot create the CA: a non-SQLite database needs {ENV_KEY} (base64 of 32 "
            f"bytes) or {ENV_KEY_FILE} (a path; created if missing)"
        )
    if path.exists():
        return _read_key_file(path)
    try:
        return _write_new_key_file(path)
    except FileExistsError:  # created meanwhile by another init
        return _read_key_file(path)
