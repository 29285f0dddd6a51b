"""Server key files: round trip, permissions, corrupt files, default location, fingerprints."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest

from quantum.keys import KeyFileError, ServerKeyFile, default_key_path, fingerprint, public_key_of

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


def test_generate_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "server.key"
    key = ServerKeyFile.generate(path)
    loaded = ServerKeyFile.load(path)
    assert loaded.private_key == key.private_key
    assert loaded.ticket_secret == key.ticket_secret
    assert loaded.public_key == key.public_key == public_key_of(key.private_key)
    assert loaded.path == path
    assert base64.b64decode(key.public_key_text) == key.public_key


@posix_only
def test_written_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    ServerKeyFile.generate(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["server.key"]  # no temp file left


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_refuses_group_or_world_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "server.key"
    ServerKeyFile.generate(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"permissions {mode:04o} are too open.*chmod 600"):
        ServerKeyFile.load(path)


def test_load_or_create(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    first, created = ServerKeyFile.load_or_create(path)
    assert created
    second, created_again = ServerKeyFile.load_or_create(path)
    assert not created_again
    assert second.private_key == first.private_key


def test_generate_replaces(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    old = ServerKeyFile.generate(path)
    new = ServerKeyFile.generate(path)
    assert new.private_key != old.private_key
    assert ServerKeyFile.load(path).private_key == new.private_key


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such key file"):
        ServerKeyFile.load(tmp_path / "absent.key")


def test_directory_is_not_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        ServerKeyFile.load(tmp_path)


GOOD_PRIVATE = base64.b64encode(bytes(range(32))).decode()
GOOD_SECRET = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a Quantum server key file"),
        (f"private-key: {GOOD_PRIVATE}\nticket-secret: {GOOD_SECRET}\n", "not a Quantum"),
        (f"quantum-server-key: v9\nprivate-key: {GOOD_PRIVATE}\n", "unsupported key file version"),
        (f"quantum-server-key: v1\nticket-secret: {GOOD_SECRET}\n", "missing private-key"),
        (f"quantum-server-key: v1\nprivate-key: {GOOD_PRIVATE}\n", "missing ticket-secret"),
        (f"quantum-server-key: v1\nprivate-key: !!!\nticket-secret: {GOOD_SECRET}\n",
         "private-key is not valid base64"),
        (f"quantum-server-key: v1\nprivate-key: AAAA\nticket-secret: {GOOD_SECRET}\n",
         "private-key must decode to 32 bytes, got 3"),
        ("quantum-server-key: v1\nsomething else\n", "line 2 is not a known"),
        ("quantum-server-key: v1\nquantum-server-key: v1\n", "line 2 repeats"),
    ],
)
def test_corrupt_files(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "server.key"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=reason):
        ServerKeyFile.load(path)


def test_binary_and_oversized_files(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    path.write_bytes(b"\xff\xfe" * 10)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not UTF-8"):
        ServerKeyFile.load(path)
    path.write_bytes(b"#" * 5000)
    with pytest.raises(KeyFileError, match="larger than"):
        ServerKeyFile.load(path)


def test_comments_and_blank_lines_are_ignored() -> None:
    text = (f"# comment\n\nquantum-server-key: v1\n  private-key: {GOOD_PRIVATE}  \n"
            f"ticket-secret: {GOOD_SECRET}\n")
    key = ServerKeyFile.loads(text)
    assert key.private_key == bytes(range(32)) and key.ticket_secret == bytes(32)


def test_secrets_never_in_repr_or_errors(tmp_path: Path) -> None:
    key = ServerKeyFile.new()
    text = repr(key)
    for secret in (key.private_key, key.ticket_secret):
        assert secret.hex() not in text
        assert base64.b64encode(secret).decode() not in text
    assert key.fingerprint in text
    bad = key.dumps().replace("ticket-secret: ", "ticket-secret: AAAA")
    with pytest.raises(KeyFileError) as info:
        ServerKeyFile.loads(bad)
    assert base64.b64encode(key.private_key).decode() not in str(info.value)


def test_fingerprint_format() -> None:
    public = bytes(range(32))
    digest = base64.b64encode(hashlib.sha256(public).digest()).decode().rstrip("=")
    assert fingerprint(public) == "SHA256:" + digest
    assert len(fingerprint(public)) == 7 + 43
    with pytest.raises(KeyFileError, match="32 bytes"):
        fingerprint(b"short")


def test_default_key_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUANTUM_KEY_FILE", str(tmp_path / "explicit.key"))
    assert default_key_path() == tmp_path / "explicit.key"
    monkeypatch.delenv("QUANTUM_KEY_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_key_path() == tmp_path / "xdg" / "quantum" / "server.key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_key_path() == tmp_path / "home" / ".config" / "quantum" / "server.key"


@posix_only
def test_missing_folders_are_created_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "server.key"
    ServerKeyFile.generate(path)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    _, created = ServerKeyFile.load_or_create(tmp_path / "d" / "e" / "server.key")
    assert created and stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700


@posix_only
@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o730])
def test_a_folder_others_can_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    ServerKeyFile.generate(folder / "server.key")
    folder.chmod(mode)
    with pytest.raises(KeyFileError, match=f"permissions {mode:04o} let group or others replace"):
        ServerKeyFile.generate(folder / "other.key")
    with pytest.raises(KeyFileError, match="chmod go-w"):
        ServerKeyFile.load(folder / "server.key")
    with pytest.raises(KeyFileError):
        ServerKeyFile.load_or_create(folder / "new.key")
    assert sorted(p.name for p in folder.iterdir()) == ["server.key"]  # nothing written


@posix_only
def test_a_sticky_shared_folder_is_accepted(tmp_path: Path) -> None:
    folder = tmp_path / "tmp-like"
    folder.mkdir()
    folder.chmod(0o1777)  # like /tmp: only a file's owner may rename or delete it
    key = ServerKeyFile.generate(folder / "server.key")
    assert ServerKeyFile.load(folder / "server.key").private_key == key.private_key
