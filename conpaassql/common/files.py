"""
Small file helpers shared by the agent and the manager.

Every file this project writes that matters (secrets, tokens, C{my.cnf}) is
written atomically: a temporary file is created I{in the same directory}
with C{O_CREAT | O_EXCL} and mode 0600, filled, flushed to disk, given its
final mode and then renamed over the target.  A reader therefore sees either
the old content or the new content, never a partial file, and a secret is
never readable by others, not even for an instant.

These helpers do blocking filesystem I/O on small files; that is acceptable
on the reactor thread.
"""

from __future__ import annotations

import os
import secrets
import stat

__all__ = ["read_or_create_token", "write_file_atomic", "write_secret_file"]

_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _fsync_directory(directory: str) -> None:
    """
    Flush a directory entry change (a rename) to disk, where the platform allows it.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file_atomic(path: str, data: bytes | str, mode: int | None = None) -> None:
    """
    Replace C{path} with C{data} atomically.

    @param path: the file to write; its directory must exist.
    @param data: the new content; L{str} is encoded as UTF-8.
    @param mode: the permission bits of the new file.  L{None} keeps the
        mode (and, when we are allowed to, the owner) of an existing file,
        or uses 0644 for a new one.

    @raise OSError: if the file cannot be written; the target is then left
        untouched and no temporary file is left behind.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = os.path.abspath(path)
    directory, name = os.path.split(path)
    owner: tuple[int, int] | None = None
    if mode is None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            mode = 0o644
        else:
            mode = stat.S_IMODE(st.st_mode)
            owner = (st.st_uid, st.st_gid)

    while True:
        temp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(temp, _TEMP_FLAGS, 0o600)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        break

    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fd, *owner)
                except PermissionError:
                    pass
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def write_secret_file(path: str, data: bytes | str) -> None:
    """
    Write a secret to C{path} atomically, readable by its owner only (0600).

    The temporary file is created with mode 0600 from the start, so the
    secret is never readable by anybody else.

    @raise OSError: if the file cannot be written.
    """
    write_file_atomic(path, data, mode=0o600)


def read_or_create_token(path: str) -> str:
    """
    Return the token kept in C{path}, creating it on first use.

    If the file exists its content, stripped of surrounding whitespace, is
    the token.  Otherwise a new token (C{secrets.token_urlsafe(32)}) is
    generated and written with L{write_secret_file}; a missing directory is
    created with mode 0700.

    @raise ValueError: if the file exists but is empty.
    @raise OSError: if the file cannot be read or written.
    """
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except FileNotFoundError:
        pass
    else:
        if not token:
            raise ValueError(f"token file {path} is empty")
        return token

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    token = secrets.token_urlsafe(32)
    write_secret_file(path, token + "\n")
    return token
