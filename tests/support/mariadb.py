"""
A real, private MariaDB server for integration tests.

Usage, in a C{twisted.trial.unittest.TestCase} (the real reactor)::

    from tests.support.mariadb import managed_server

    class MyTests(TestCase):
        async def test_something(self) -> None:
            server = await managed_server(self)
            conn = pymysql.connect(**server.connect_args())   # in a thread, please
            ...

L{managed_server} makes a L{ManagedServer} in a fresh C{self.mktemp()}
directory on a free port bound to 127.0.0.1, starts it (about a second) and
registers a cleanup that stops it and checks that the process is gone.  The
server never touches the system server: not port 3306, not /var/lib/mysql,
not /etc/mysql (it runs with C{--defaults-file} of its own).

What you get:
  - C{server.connect_args()}: keyword arguments for C{pymysql.connect} /
    C{adbapi.ConnectionPool("pymysql", **args)}, root over the unix socket.
  - C{server.port}: its TCP port on 127.0.0.1; L{root_password}C{(server)}
    for TCP connections as root.
  - C{server.client_defaults_file}, C{server.client_binary},
    C{server.dump_binary}, C{server.child_environment()}: to run
    C{mariadb}/C{mariadb-dump} with C{--defaults-extra-file=}.

L{skip_unless_mariadb} gives the reason to skip when no server binary is
installed (use it as C{skip = skip_unless_mariadb()} on a TestCase class).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from conpaassql.agent import mycnf
from conpaassql.agent.config import AgentConfig, ServerSettings, find_binary
from conpaassql.agent.mysqld import STOPPED, ManagedServer

__all__ = [
    "make_managed_server",
    "managed_server",
    "pid_alive",
    "root_password",
    "skip_unless_mariadb",
    "stop_and_check",
]


def skip_unless_mariadb() -> str | None:
    """
    Return a skip reason if no C{mariadbd}/C{mysqld} and
    C{mariadb-install-db} are installed, else L{None}.
    """
    if find_binary(["mariadbd", "mysqld"]) is None:
        return "no mariadbd or mysqld installed"
    if find_binary(["mariadb-install-db", "mysql_install_db"]) is None:
        return "no mariadb-install-db installed"
    return None


def pid_alive(pid: int) -> bool:
    """
    Whether a process with this id exists (and is not a zombie).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    # The state is the field after the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def root_password(server: ManagedServer) -> str:
    """
    The generated root password of a managed server (from its root.cnf).
    """
    password = mycnf.read_mycnf(server.root_cnf_path).get("client", "password")
    assert password, "root.cnf holds no password"
    return password


def make_managed_server(testcase: TestCase, **settings: Any) -> ManagedServer:
    """
    Build (not start) a L{ManagedServer} in a fresh temporary directory,
    with C{mysqld_port} 0 and C{bind_address} 127.0.0.1 unless overridden
    by C{settings} (fields of L{ServerSettings}).  No cleanup is registered.
    """
    state_dir = testcase.mktemp()
    os.makedirs(state_dir)
    defaults = AgentConfig().server
    server_settings = ServerSettings(
        mode="managed",
        mysqld=settings.pop("mysqld", find_binary(["mariadbd", "mysqld"])),
        install_db=settings.pop(
            "install_db", find_binary(["mariadb-install-db", "mysql_install_db"])
        ),
        client=settings.pop("client", find_binary(["mariadb", "mysql"])),
        dump=settings.pop("dump", find_binary(["mariadb-dump", "mysqldump"])),
        mysqld_port=settings.pop("mysqld_port", 0),
        bind_address=settings.pop("bind_address", defaults.bind_address),
        datadir_template=settings.pop("datadir_template", None),
    )
    if settings:
        raise TypeError(f"unknown settings: {sorted(settings)}")
    from twisted.internet import reactor

    return ManagedServer(state_dir, AgentConfig(server=server_settings), reactor)


async def stop_and_check(testcase: TestCase, server: ManagedServer) -> None:
    """
    Stop a server and fail the test if its process is still there.
    """
    pid = server.pid
    await server.stop()
    testcase.assertIn(server.state, (STOPPED, "INIT"))
    if pid is not None:
        testcase.assertFalse(pid_alive(pid), f"mariadbd (pid {pid}) still running after stop")


async def managed_server(testcase: TestCase, **settings: Any) -> ManagedServer:
    """
    Start a private server for C{testcase} and stop it when the test ends.

    @param settings: overrides of L{ServerSettings} fields (e.g.
        C{bind_address}); by default a free port on 127.0.0.1.
    @return: the RUNNING L{ManagedServer}.
    @raise ServerError: if it did not start.
    """
    server = make_managed_server(testcase, **settings)

    def cleanup() -> Deferred[None]:
        return Deferred.fromCoroutine(stop_and_check(testcase, server))

    testcase.addCleanup(cleanup)
    await server.start()
    return server
