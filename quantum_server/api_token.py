"""The API's bearer token, kept in its own file beside the server key file.

``server.key`` -> ``server.api-token``: one line, 32 random bytes as URL-safe base64, mode 0600,
created on the server's first start (or by `quantum-server api-token`). A file of its own rather
than a value derived from the key, so that a leaked token is replaced by deleting the file and
restarting, without changing the server's identity (which every client pins). Nodes of one
cluster that should accept one token get a copy of the same file. Loading refuses a file that
group or others can access, as the key file's loader does.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import tempfile
from pathlib import Path

__all__ = ["ApiTokenError", "load_or_create_token", "load_token", "token_path"]

SUFFIX = ".api-token"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")
_MAX_FILE_SIZE = 512


class ApiTokenError(Exception):
    """The token file is missing, unreadable, malformed or too widely readable."""


def token_path(key_file: Path) -> Path:
    """Where the token of the server with this key file lives."""
    return key_file.with_suffix(SUFFIX) if key_file.suffix else key_file.with_name(
        key_file.name + SUFFIX)


def load_token(path: Path) -> str:
    """Read a token file (never quoting its contents in an error)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ApiTokenError(f"{path}: no API token file (the server creates it on its first "
                            "start; `quantum-server api-token` creates it too)") from None
    except OSError as exc:
        raise ApiTokenError(f"{path}: cannot read the API token: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise ApiTokenError(f"{path}: not a regular file")
        if os.name == "posix" and mode & 0o077:
            raise ApiTokenError(f"{path}: permissions {stat.S_IMODE(mode):04o} are too open; "
                                f"the API token must be private (chmod 600 {path})")
        data = handle.read(_MAX_FILE_SIZE + 1)
    text = data.decode("ascii", "replace").strip()
    if len(data) > _MAX_FILE_SIZE or not _TOKEN.fullmatch(text):
        raise ApiTokenError(f"{path}: not an API token file (expected one line of 32-128 "
                            "URL-safe base64 characters)")
    return text


def load_or_create_token(key_file: Path) -> tuple[str, Path, bool]:
    """The token beside `key_file`, created if missing: (token, its path, created).

    Created whole or not at all: written to a private temporary file, then linked into place
    (atomic create-if-absent), so a second server starting at the same instant reads this
    token or wins with its own, never a half-written file."""
    path = token_path(key_file)
    if path.exists():
        return load_token(path), path, False
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".api-token-", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(token + "\n")
            os.link(tmp, path)
        except FileExistsError:
            return load_token(path), path, False
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise ApiTokenError(f"{path}: cannot create the API token: {exc.strerror}") from None
    return token, path, True
