"""The store key: AES-GCM sealing, where the key comes from, clear errors without it."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from meshgate.ca.errors import CaKeyError
from meshgate.ca.keys import KeyBox, create_keybox, generate_key, key_file_for, load_keybox


def _url(p: Path) -> str:
    return f"sqlite:///{p}"


def test_seal_and_open_round_trip_and_ciphertext_hides_the_key() -> None:
    box = KeyBox(generate_key(), "test")
    secret = b"-----BEGIN PRIVATE KEY-----\nsecret material\n"
    blob = box.encrypt(secret)
    assert secret not in blob and b"secret" not in blob
    assert box.encrypt(secret) != blob  # fresh nonce every time
    assert box.decrypt(blob) == secret


def test_wrong_key_is_named_as_such() -> None:
    blob = KeyBox(generate_key(), "a").encrypt(b"x")
    with pytest.raises(CaKeyError, match=r"^cannot sign: wrong encryption key \(b\)"):
        KeyBox(generate_key(), "b").decrypt(blob)


def test_tampered_blob_fails_clearly() -> None:
    box = KeyBox(generate_key(), "key file k")
    blob = bytearray(box.encrypt(b"some key"))
    blob[-1] ^= 1
    with pytest.raises(CaKeyError, match="does not decrypt with the key from key file k"):
        box.decrypt(bytes(blob))
    with pytest.raises(CaKeyError, match="not in meshgate's sealed format"):
        box.decrypt(b"plain text")


def test_init_creates_a_0600_key_file_beside_the_database(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    old = os.umask(0)
    try:
        box = create_keybox(_url(db))
    finally:
        os.umask(old)
    path = tmp_path / "m.db.key"
    assert key_file_for(_url(db)) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert base64.b64decode(path.read_text()) == box.key
    assert load_keybox(_url(db)).key == box.key
    assert create_keybox(_url(db)).key == box.key  # an existing key file is reused


def test_missing_key_file_says_cannot_sign(tmp_path: Path) -> None:
    with pytest.raises(CaKeyError, match=r"^cannot sign: no CA encryption key: .*m\.db\.key does not exist"):
        load_keybox(_url(tmp_path / "m.db"))


def test_environment_key_wins_and_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    monkeypatch.setenv("MESHGATE_CA_KEY", base64.b64encode(key).decode())
    assert load_keybox(_url(tmp_path / "m.db")).key == key
    assert create_keybox(_url(tmp_path / "m.db")).key == key
    assert not (tmp_path / "m.db.key").exists()  # no file when the key comes from the env
    monkeypatch.setenv("MESHGATE_CA_KEY", "not base64!")
    with pytest.raises(CaKeyError, match="MESHGATE_CA_KEY is not base64"):
        load_keybox(_url(tmp_path / "m.db"))
    monkeypatch.setenv("MESHGATE_CA_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(CaKeyError, match="holds 5 bytes, expected 32"):
        load_keybox(_url(tmp_path / "m.db"))


def test_non_sqlite_database_needs_an_explicit_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://u@127.0.0.1/meshgate"
    with pytest.raises(CaKeyError, match="MESHGATE_CA_KEY"):
        load_keybox(url)
    with pytest.raises(CaKeyError, match="non-SQLite database needs MESHGATE_CA_KEY"):
        create_keybox(url)
    keyfile = tmp_path / "pg.key"
    monkeypatch.setenv("MESHGATE_CA_KEY_FILE", str(keyfile))
    box = create_keybox(url)
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert load_keybox(url).key == box.key
