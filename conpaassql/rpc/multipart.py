"""
A streaming multipart/form-data reader over a request body already on disk.

Twisted's own form parsing reads the whole body into memory; this one scans
the body file in fixed-size chunks and describes each file part as a byte
range of that file (L{Upload}), so a multi-gigabyte dump is neither copied
nor held in memory.  Plain (non-file) fields are small and read whole, up to
a limit.
"""

from __future__ import annotations

import os
from email.message import Message
from email.parser import BytesHeaderParser
from typing import BinaryIO

from conpaassql.rpc.dispatch import Upload
from conpaassql.rpc.errors import InvalidRequest, TooLarge

_CHUNK = 1024 * 1024
_MAX_HEADERS = 16 * 1024


def boundaryOf(contentType: str) -> bytes:
    msg = Message()
    msg["content-type"] = contentType
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary or len(boundary) > 200:
        raise InvalidRequest("multipart/form-data without a valid boundary")
    return boundary.encode("latin-1")


def _find(f: BinaryIO, needle: bytes, start: int, end: int) -> int:
    """Offset of the first C{needle} in C{f[start:end]}, or -1."""
    fd = f.fileno()
    pos = start
    overlap = len(needle) - 1
    while pos < end:
        chunk = os.pread(fd, min(_CHUNK + overlap, end - pos), pos)
        if not chunk:
            return -1
        i = chunk.find(needle)
        if i >= 0:
            return pos + i
        if pos + len(chunk) >= end:
            return -1
        pos += max(1, len(chunk) - overlap)
    return -1


def parseMultipart(
    f: BinaryIO, contentType: str, *, maxFieldSize: int = 1024 * 1024
) -> tuple[dict[str, str], dict[str, Upload]]:
    """
    Split a multipart/form-data body into its plain fields and its files.
    This reads the file with positional reads; call it off the reactor
    thread for large bodies.

    @raise InvalidRequest: the body is not well-formed multipart.
    @raise TooLarge: a plain field is larger than C{maxFieldSize}.
    """
    boundary = boundaryOf(contentType)
    f.seek(0, os.SEEK_END)
    total = f.tell()
    fd = f.fileno()
    delimiter = b"--" + boundary
    first = _find(f, delimiter, 0, total)
    if first < 0:
        raise InvalidRequest("multipart body without its boundary")
    fields: dict[str, str] = {}
    files: dict[str, Upload] = {}
    pos = first + len(delimiter)
    parser = BytesHeaderParser()
    while True:
        tail = os.pread(fd, 2, pos)
        if tail == b"--":
            break
        if tail != b"\r\n":
            raise InvalidRequest("malformed multipart body: boundary not followed by CRLF")
        headerStart = pos + 2
        headerEnd = _find(f, b"\r\n\r\n", headerStart, min(total, headerStart + _MAX_HEADERS))
        if headerEnd < 0:
            raise InvalidRequest("malformed multipart body: part headers not terminated")
        headers = parser.parsebytes(os.pread(fd, headerEnd - headerStart, headerStart) + b"\r\n")
        bodyStart = headerEnd + 4
        nextDelimiter = _find(f, b"\r\n" + delimiter, bodyStart, total)
        if nextDelimiter < 0:
            raise InvalidRequest("malformed multipart body: truncated (no closing boundary)")
        disposition = headers.get("content-disposition", "")
        msg = Message()
        msg["content-disposition"] = disposition
        name = msg.get_param("name", header="content-disposition")
        filename = msg.get_param("filename", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("malformed multipart body: a part without a field name")
        size = nextDelimiter - bodyStart
        if filename is not None:
            files[name] = Upload(
                field=name,
                filename=os.path.basename(str(filename)) or None,
                contentType=headers.get("content-type"),
                fd=fd,
                start=bodyStart,
                size=size,
            )
        else:
            if size > maxFieldSize:
                raise TooLarge(
                    f"form field '{name}' is larger than {maxFieldSize} bytes; "
                    "send data as a file field"
                )
            value = os.pread(fd, size, bodyStart)
            try:
                fields[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(f"form field '{name}' is not valid UTF-8") from None
        pos = nextDelimiter + 2 + len(delimiter)
    return fields, files
