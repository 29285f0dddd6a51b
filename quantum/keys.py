"""The server key file: the X25519 static private key and the ticket secret, in one text file.

Format (UTF-8 text, one `name: value` per line, `#` comments and blank lines ignored)::

    # Quantum server key file: keep it secret (mode 0600).
    quantum-server-key: v1
    private-key: <base64 of the 32-byte X25519 private key>
    ticket-secret: <base64 of 32 random bytes>

Anyone who reads this file can impersonate the server and mint tickets, so it is written with
mode 0600 (atomically, through a temporary file in the same directory) and `load` refuses a
file that group or others may access at all, as OpenSSH does for private keys. Missing folders
on the way to it are created 0700, and a key file is neither written nor read in a folder that
group or others may write to (they could swap the key), unless it is sticky like /tmp, as
OpenSSH's StrictModes does. Secrets never appear in `repr()` or in messages.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from quantum.errors import QuantumError

KEY_FILE_ENV = "QUANTUM_KEY_FILE"
FORMAT_VERSION = "v1"
SECRET_SIZE = 32
_MAX_FILE_SIZE = 4096  # a real key file is ~200 bytes; refuse to slurp anything big


class KeyFileError(QuantumError):
    """A key file is missing, unreadable, corrupt or too widely readable."""


def default_key_path() -> Path:
    """`$QUANTUM_KEY_FILE`, else `$XDG_CONFIG_HOME/quantum/server.key`, else ~/.config/..."""
    explicit = os.environ.get(KEY_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME")
    base = Path(config_home) if config_home else Path.home() / ".config"
    return base / "quantum" / "server.key"


def fingerprint(public_key: bytes) -> str:
    """`SHA256:<base64, unpadded>` of a 32-byte public key (the OpenSSH fingerprint style)."""
    if len(public_key) != 32:
        raise KeyFileError(f"public key must be 32 bytes, got {len(public_key)}")
    digest = hashlib.sha256(public_key).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def public_key_of(private_key: bytes) -> bytes:
    """The X25519 public key belonging to a 32-byte private key."""
    if len(private_key) != 32:
        raise KeyFileError(f"private key must be 32 bytes, got {len(private_key)}")
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class ServerKeyFile:
    """The server's long-term secrets. `repr()` shows the fingerprint, never the secrets."""

    private_key: bytes = field(repr=False)
    ticket_secret: bytes = field(repr=False)
    path: Path | None = None
    public_key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.ticket_secret) != SECRET_SIZE:
            raise KeyFileError(
                f"ticket secret must be {SECRET_SIZE} bytes, got {len(self.ticket_secret)}")
        object.__setattr__(self, "public_key", public_key_of(self.private_key))

    def __repr__(self) -> str:
        return f"ServerKeyFile(path={self.path!r}, fingerprint={self.fingerprint!r})"

    @property
    def public_key_text(self) -> str:
        """The public key as standard base64: what clients pin (`server_key=`)."""
        return base64.b64encode(self.public_key).decode("ascii")

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    @classmethod
    def new(cls, path: Path | None = None) -> ServerKeyFile:
        """Fresh random secrets, in memory only."""
        private = X25519PrivateKey.generate().private_bytes_raw()
        return cls(private, os.urandom(SECRET_SIZE), path)

    def dumps(self) -> str:
        """The file's text."""
        return (
            "# Quantum server key file: keep it secret (mode 0600). Anyone who can read it can\n"
            "# impersonate this server and issue tickets.\n"
            f"quantum-server-key: {FORMAT_VERSION}\n"
            f"private-key: {base64.b64encode(self.private_key).decode('ascii')}\n"
            f"ticket-secret: {base64.b64encode(self.ticket_secret).decode('ascii')}\n"
        )

    @classmethod
    def loads(cls, text: str, path: Path | None = None) -> ServerKeyFile:
        """Parse a key file's text; KeyFileError says what is wrong (never quoting secrets)."""
        where = str(path) if path is not None else "key file"
        values: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.partition(":")
            name = name.strip()
            if not sep or name not in ("quantum-server-key", "private-key", "ticket-secret"):
                raise KeyFileError(f"{where}: line {number} is not a known `name: value` entry")
            if name in values:
                raise KeyFileError(f"{where}: line {number} repeats {name}")
            values[name] = value.strip()
        version = values.get("quantum-server-key")
        if version is None:
            raise KeyFileError(
                f"{where}: not a Quantum server key file (no quantum-server-key line)")
        if version != FORMAT_VERSION:
            raise KeyFileError(f"{where}: unsupported key file version {version!r}; "
                               f"this server reads {FORMAT_VERSION}")
        private = _secret(values, "private-key", where)
        ticket = _secret(values, "ticket-secret", where)
        return cls(private, ticket, path)

    @classmethod
    def load(cls, path: Path | str) -> ServerKeyFile:
        """Read a key file, refusing one that group or others can access."""
        path = Path(path)
        _check_folder(path.parent)
        try:
            with path.open("rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    raise KeyFileError(f"{path}: not a regular file")
                if os.name == "posix" and mode & 0o077:
                    raise KeyFileError(
                        f"{path}: permissions {stat.S_IMODE(mode):04o} are too open; the key "
                        f"file must not be accessible by group or others (chmod 600 {path})")
                data = handle.read(_MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            raise KeyFileError(f"{path}: no such key file (create one with "
                               "`quantum-server keygen`)") from None
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from None
        if len(data) > _MAX_FILE_SIZE:
            raise KeyFileError(f"{path}: larger than {_MAX_FILE_SIZE} bytes; not a key file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyFileError(f"{path}: not UTF-8 text; not a key file") from None
        return cls.loads(text, path)

    @classmethod
    def generate(cls, path: Path | str) -> ServerKeyFile:
        """New secrets written to `path` (mode 0600, replacing any existing file)."""
        path = Path(path)
        key = cls.new(path)
        _write_private(path, key.dumps(), replace=True)
        return key

    @classmethod
    def load_or_create(cls, path: Path | str) -> tuple[ServerKeyFile, bool]:
        """Load `path`, or create it if missing; `created` tells which happened."""
        path = Path(path)
        if not path.exists():
            key = cls.new(path)
            if _write_private(path, key.dumps(), replace=False):
                return key, True
            # another process created it between our check and our write: use theirs
        return cls.load(path), False


def _secret(values: dict[str, str], name: str, where: str) -> bytes:
    text = values.get(name)
    if text is None:
        raise KeyFileError(f"{where}: missing {name}")
    try:
        secret = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{where}: {name} is not valid base64") from None
    if len(secret) != SECRET_SIZE:
        raise KeyFileError(f"{where}: {name} must decode to {SECRET_SIZE} bytes, "
                           f"got {len(secret)}")
    return secret


def _make_folders(folder: Path) -> None:
    """Create `folder` and every missing folder above it, each with mode 0700 (`Path.mkdir`
    with parents=True would create the ones above with the default 0755)."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for each in reversed(missing):
        # one created meanwhile by another process is left as it is: _check_folder judges it
        with contextlib.suppress(FileExistsError):
            each.mkdir(mode=0o700)


def _check_folder(folder: Path) -> None:
    """Refuse a folder where group or others could replace the key file (writable by them and
    not sticky): a KeyFileError saying how to fix it."""
    if os.name != "posix":
        return
    try:
        mode = folder.stat().st_mode
    except FileNotFoundError:
        return  # the caller reports the missing key file itself
    except OSError as exc:
        raise KeyFileError(f"{folder}: cannot inspect the key file's folder: {exc.strerror}"
                           ) from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        raise KeyFileError(
            f"{folder}: permissions {stat.S_IMODE(mode):04o} let group or others replace the "
            f"key file in it; keep the key in a folder only its owner can write to "
            f"(chmod go-w {folder})")


def _write_private(path: Path, text: str, *, replace: bool) -> bool:
    """Write atomically with mode 0600; False if `replace` is off and the file appeared."""
    try:
        _make_folders(path.parent)
        _check_folder(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=".server-key-", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # atomic create-if-absent
                except FileExistsError:
                    return False
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write key file: {exc.strerror}") from None
    return True
