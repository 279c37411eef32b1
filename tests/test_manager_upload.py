"""
L{UploadReader}: a dump's byte range on disk, read as a file (for the
stream on to the agents), never whole.
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from conpaassql.rpc.dispatch import Upload, UploadReader


def _upload(prefix: bytes, data: bytes, suffix: bytes) -> tuple[Upload, int]:
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    os.write(fd, prefix + data + suffix)
    return Upload("mysqldump", "d.sql", None, fd, len(prefix), len(data)), fd


class UploadReaderTests(SynchronousTestCase):
    @given(st.binary(max_size=64), st.binary(max_size=4096), st.binary(max_size=64),
           st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=20))
    def test_reads_exactly_the_range(
        self, prefix: bytes, data: bytes, suffix: bytes, sizes: list[int]
    ) -> None:
        upload, fd = _upload(prefix, data, suffix)
        try:
            reader = UploadReader(upload)
            self.assertEqual(reader.seek(0, os.SEEK_END), len(data))
            self.assertEqual(reader.tell(), len(data))
            reader.seek(0)
            got = b""
            for size in sizes * (len(data) // max(1, sum(sizes)) + 2):
                chunk = reader.read(size)
                self.assertLessEqual(len(chunk), size)
                got += chunk
            self.assertEqual(got, data)
            self.assertEqual(reader.read(10), b"")
            reader.seek(0)
            self.assertEqual(reader.read(), data)
        finally:
            os.close(fd)

    def test_independent_positions(self) -> None:
        upload, fd = _upload(b"xx", b"0123456789", b"yy")
        try:
            a, b = UploadReader(upload), UploadReader(upload)
            self.assertEqual(a.read(4), b"0123")
            self.assertEqual(b.read(2), b"01")
            self.assertEqual(a.read(100), b"456789")
            b.seek(-3, os.SEEK_END)
            self.assertEqual(b.read(), b"789")
            b.seek(2, os.SEEK_CUR)
            self.assertEqual(b.tell(), 12)
            self.assertEqual(b.read(5), b"")
        finally:
            os.close(fd)
