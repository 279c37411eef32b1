"""
Tests of the datadir template (conpaassql.agent.initdb): made once by the
real mariadb-install-db, copied by real managed servers.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import pymysql
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from conpaassql.agent import initdb
from conpaassql.agent.mysqld import RUNNING, ManagedServer
from tests.support.mariadb import (
    make_managed_server,
    root_password,
    skip_unless_mariadb,
    stop_and_check,
)

#: What mariadb-install-db prints; in a server's error log when it ran.
INSTALLER_SAYS = "Installing MariaDB/MySQL system tables"


def fingerprint(directory: str) -> dict[str, tuple[int, int, str]]:
    """
    Every file under C{directory}: size, modification time, SHA-256.
    """
    result: dict[str, tuple[int, int, str]] = {}
    for top, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(top, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            st = os.lstat(path)
            result[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns, digest)
    return result


async def makeTemplate(root: str) -> str:
    """
    Run C{python -m conpaassql.agent.initdb --root ROOT}; return the path it prints.
    """
    source = os.path.dirname(os.path.dirname(os.path.abspath(initdb.__file__)))
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "conpaassql.agent.initdb", "--root", root],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
             "PYTHONPATH": os.path.dirname(source)},
        reactor=reactor,
    )
    assert code == 0, err
    return out.decode().strip()


def read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


class UnitTests(SynchronousTestCase):
    def test_template_name(self) -> None:
        """
        The name carries the flavour and version, with nothing unsafe in a path.
        """
        self.assertEqual(initdb.template_name("mariadb", "10.11.6-MariaDB-0+deb12u1"),
                         "mariadb-10.11.6-MariaDB-0+deb12u1")
        self.assertEqual(initdb.template_name("mysql", "../8.0 x"), "mysql-.._8.0_x")

    def make(self, version: str = "1.0", files: dict[str, int] | None = None) -> str:
        directory = self.mktemp()
        os.makedirs(os.path.join(directory, "data", "mysql"))
        with open(os.path.join(directory, "data", "mysql", "user.MAI"), "wb") as f:
            f.write(b"x" * 10)
        marker = {"version": version, "files": {"mysql/user.MAI": 10} if files is None else files}
        with open(os.path.join(directory, initdb.MARKER), "w") as f:
            json.dump(marker, f)
        return directory

    def test_check_template(self) -> None:
        """
        A template is used only when complete, unchanged and of the server's
        version.
        """
        self.assertIsNone(initdb.check_template(self.make(), "1.0"))
        self.assertIn("version", initdb.check_template(self.make(), "1.1") or "")
        self.assertIn("version", initdb.check_template(self.make(), None) or "")
        self.assertIn("misses", initdb.check_template(self.make(files={"ibdata1": 3}), "1.0")
                      or "")
        changed = self.make()
        with open(os.path.join(changed, "data", "mysql", "user.MAI"), "ab") as f:
            f.write(b"y")
        self.assertIn("changed", initdb.check_template(changed, "1.0") or "")
        unmarked = self.make()
        os.unlink(os.path.join(unmarked, initdb.MARKER))
        self.assertIn("no complete template", initdb.check_template(unmarked, "1.0") or "")
        self.assertIn("no complete template", initdb.check_template(self.mktemp(), "1.0") or "")


class TemplateTests(TestCase):
    """
    Real templates and real servers made from them.
    """

    skip = skip_unless_mariadb()

    async def start(self, **settings: object) -> ManagedServer:
        server = make_managed_server(self, **settings)  # type: ignore[arg-type]

        def cleanup() -> Deferred[None]:
            return Deferred.fromCoroutine(stop_and_check(self, server))

        self.addCleanup(cleanup)
        await server.start()
        return server

    async def test_make_template(self) -> None:
        """
        The command makes a complete template named by the server's version,
        and a second run finds it instead of making another.
        """
        root = os.path.abspath(self.mktemp())
        path = await makeTemplate(root)
        self.assertEqual(os.path.dirname(path), root)
        marker = json.loads(read(os.path.join(path, initdb.MARKER)))
        self.assertEqual(os.path.basename(path), initdb.template_name("mariadb",
                                                                      marker["version"]))
        self.assertIsNone(initdb.check_template(path, marker["version"]))
        self.assertTrue(os.path.isdir(os.path.join(path, "data", "mysql")))
        self.assertIn("ibdata1", marker["files"])
        before = fingerprint(path)
        self.assertEqual(await makeTemplate(root), path)
        self.assertEqual(fingerprint(path), before)
        # Nothing left of the build.
        self.assertEqual(os.listdir(root), [os.path.basename(path)])

    async def test_servers_from_template(self) -> None:
        """
        Two servers made from one template run without the installer, each
        with its own root password (root without one is refused), its own
        data directory, socket and tmpdir; the template is untouched.
        """
        template = await makeTemplate(os.path.abspath(self.mktemp()))
        before = fingerprint(template)
        first = await self.start(datadir_template=template)
        second = await self.start(datadir_template=template)
        for server in (first, second):
            self.assertEqual(server.state, RUNNING)
            self.assertNotIn(INSTALLER_SAYS, read(server.error_log_path))
            self.assertFalse(server.datadir.startswith(template))
        self.assertNotEqual(root_password(first), root_password(second))
        self.assertNotEqual(first.socket_path, second.socket_path)
        self.assertNotEqual(first.tmp_dir, second.tmp_dir)

        def check(server: ManagedServer, other: ManagedServer) -> list[tuple[str, str]]:
            tcp = {"host": "127.0.0.1", "port": server.port, "user": "root",
                   "connect_timeout": 5}
            for password in ("", root_password(other)):
                try:
                    pymysql.connect(**tcp, password=password).close()
                except pymysql.err.OperationalError as e:
                    assert e.args[0] == 1045, e
                else:
                    raise AssertionError("root accepted without its own password")
            conn = pymysql.connect(**tcp, password=root_password(server))
            try:
                with conn.cursor() as cursor:
                    cursor.execute("CREATE DATABASE shop")
                    cursor.execute("SELECT User, Host FROM mysql.user")
                    return sorted((str(u), str(h)) for u, h in cursor.fetchall())
            finally:
                conn.close()

        for server, other in ((first, second), (second, first)):
            accounts = await deferToThread(check, server, other)
            self.assertEqual([a for a in accounts if a[0] in ("root", "")],
                             [("root", "127.0.0.1"), ("root", "::1"), ("root", "localhost")])
        await first.restart()
        self.assertEqual(first.state, RUNNING)
        self.assertEqual(fingerprint(template), before)

    async def test_without_usable_template(self) -> None:
        """
        A missing template, or one that is not complete, is not used: the
        server is initialised by the installer and runs.
        """
        template = await makeTemplate(os.path.abspath(self.mktemp()))
        os.unlink(os.path.join(template, initdb.MARKER))
        for given in (os.path.abspath(self.mktemp()), template):
            server = await self.start(datadir_template=given)
            self.assertEqual(server.state, RUNNING)
            self.assertIn(INSTALLER_SAYS, read(server.error_log_path))
            await stop_and_check(self, server)
