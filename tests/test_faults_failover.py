"""
Losing the replication master: a real manager (in this process) on the
LOCAL driver, a master and two seeded slaves (real agents, real
C{mariadbd}s), the master then killed (its agent and its server, with the
LOCAL cloud's agent restart off: a crashed VM) or frozen (SIGSTOP: to the
manager, a node cut off from the network that still runs).

  - C{failover = manual}: the loss is reported (get_service_info
    C{master_lost}) and nothing is promoted; C{set_up_replica_master} on a
    slave that is not the most advanced is refused, on the most advanced one
    it recovers the service.
  - C{failover = auto}: the most advanced slave is promoted and the other
    follows it; the old master's VM is ended first.
  - A frozen master is fenced (its VM ended by the cloud) before a slave is
    promoted: at no time are there two writable masters.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import threading
import time
from types import MappingProxyType
from typing import Any

import pymysql
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from conpaassql.manager.config import ManagerConfig
from conpaassql.manager.service import Manager
from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.errors import Conflict
from tests.support.managerproc import (
    WAIT,
    nodeProcesses,
    nodesIn,
    reactor,
    startInProcess,
    until,
)
from tests.support.mariadb import pid_alive, skip_unless_mariadb
from tests.test_iaas_local import LocalCloud, localCloud
from tests.test_manager_replication import DUMP, PASSWORD, insertRows, sql

IP = shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)


def readOnly2(port: int) -> bool:
    """The server's read_only; fails if it cannot be reached."""
    return bool((sql(port, "SELECT @@GLOBAL.read_only"))[0][0])


def readOnly(port: int) -> bool | None:
    """The server's read_only, or None if it does not answer."""
    try:
        return bool((sql(port, "SELECT @@GLOBAL.read_only"))[0][0])
    except pymysql.MySQLError:
        return None


class ReplicatedService(TestCase):
    """A manager with a master and two slaves, and the helpers of the tests on it."""

    skip = skip_unless_mariadb()
    timeout = 900

    def inThread(self, f: Any, *args: Any) -> Deferred[Any]:
        """Run blocking C{f(*args)} (SQL) off the reactor."""
        return deferToThread(f, *args)

    async def replicated(
        self, failover: str, lostTimeout: float = 2.0
    ) -> tuple[LocalCloud, Manager, RPCClient, dict[int, int]]:
        """A manager, master node 1 with data and a user, slaves 2 and 3 in sync."""
        cloud = localCloud(self)
        config = ManagerConfig(
            poll_interval=0.25, boot_timeout=WAIT, probe_timeout=1.0, metrics_interval=5,
            failover=failover, master_lost_timeout=lostTimeout,
            driverSettings=MappingProxyType({"LOCAL_AGENT_RESTART": "false",
                                             "LOCAL_STOP_TIMEOUT": "2"}),
        )
        service, client = await startInProcess(self, cloud.stateDir, config)
        await client.call("add_nodes", {"function": "agent", "count": 3})
        await until(lambda: nodesIn(client, "RUNNING", [1, 2, 3]), "three RUNNING nodes")
        ports = {i: (await self.info(client, i))["mysqld_port"] for i in (1, 2, 3)}
        await client.call("set_up_replica_master", {"id": 1})

        async def ready() -> bool:
            info = await self.info(client, 1)
            return bool(info["isRunningMySQL"]) and not info.get("unreachable")

        await until(ready, "the master running again after its restart")
        await client.call("configure_user", {"serviceNodeId": 1, "username": "app",
                                             "password": PASSWORD, "databases": ["shop"]})
        path = os.path.join(cloud.stateDir, "shop.sql")
        with open(path, "wb") as out:
            out.write(DUMP)
        with open(path, "rb") as dump:
            await client.upload("send_mysqldump", {"serviceNodeId": "1"},
                                {"mysqldump": ("shop.sql", dump)}, timeout=120)
        for nodeId in (2, 3):
            await client.call("set_up_replica_slave", {"id": nodeId})
        await until(lambda: self.roles(client, {2: "SLAVE", 3: "SLAVE"}), "two slaves")
        await self.inThread(insertRows, ports[1], 100, 200)
        await until(lambda: self.count(ports, [1, 2, 3], 203), "slaves in sync")
        assert service.manager is not None
        return cloud, service.manager, client, ports

    async def info(self, client: RPCClient, nodeId: int) -> dict[str, Any]:
        return dict((await client.call("get_node_info", {"serviceNodeId": nodeId}))["serviceNode"])

    async def roles(self, client: RPCClient, expected: dict[int, str]) -> bool:
        for nodeId, role in expected.items():
            info = await self.info(client, nodeId)
            setup = info.get("replication", {}).get("setup", {})
            if setup.get("error"):
                raise AssertionError(f"node {nodeId}: {info}")
            if info["role"] != role:
                return False
        return True

    async def count(self, ports: dict[int, int], ids: list[int], rows: int) -> bool:
        for i in ids:
            found = (await self.inThread(sql, ports[i], "SELECT COUNT(*) FROM items"))[0][0]
            if found != rows:
                return False
        return True

    async def agentCall(self, manager: Manager, nodeId: int, method: str) -> Any:
        record = manager.nodes[nodeId].core.record
        agent = RPCClient(f"http://127.0.0.1:{record.agent_port}/", record.token,
                          reactor=reactor, timeout=60)
        try:
            return (await agent.call(method))["return"]
        finally:
            await agent.close()

    async def node3Ahead(self, manager: Manager, ports: dict[int, int]) -> None:
        """Node 2 stops replicating; 50 more rows reach node 3 only."""
        await self.agentCall(manager, 2, "stop_replica")
        await self.inThread(insertRows, ports[1], 1000, 50)
        await until(lambda: self.count(ports, [1, 3], 253), "node 3 in sync")
        self.assertTrue(await self.count(ports, [2], 203))

    def masterPids(self, cloud: LocalCloud, manager: Manager) -> list[int]:
        name = manager.nodes[1].core.record.name
        with open(os.path.join(cloud.baseDir, name, "twistd.pid")) as f:
            agent = int(f.read())
        return [agent, manager.nodes[1].core.agentInfo["pid"]]

    async def followed(self, client: RPCClient, ports: dict[int, int], master: int,
                       slave: int, rows: int) -> None:
        """The new master takes writes; the slave follows it and has them."""
        await until(lambda: self.roles(client, {master: "MASTER", slave: "SLAVE"}),
                    f"node {slave} following node {master}")
        self.assertFalse(await self.inThread(readOnly, ports[master]))
        self.assertTrue(await self.inThread(readOnly, ports[slave]))
        await self.inThread(insertRows, ports[master], 5000, 10)
        await until(lambda: self.count(ports, [master, slave], rows + 10),
                    "the new master's writes on the slave")
        self.assertEqual(await client.call("list_nodes"), {"serviceNode": [2, 3]})
        info = await client.call("get_service_info")
        self.assertEqual(info["master"], master)
        self.assertNotIn("master_lost", info)
        self.assertEqual((info["last_failover"]["from"], info["last_failover"]["to"]),
                         (1, master))

    async def promotedAfterFence(self, pids: list[int], ports: dict[int, int]) -> None:
        """
        Wait until a slave is writable; check that the old master's
        processes (C{pids}) were all dead by then.
        """
        seen: dict[str, float] = {}

        async def watch() -> bool:
            if "dead" not in seen and not any(pid_alive(p) for p in pids):
                seen["dead"] = time.monotonic()
            if "writable" not in seen:
                for i in (2, 3):
                    if await self.inThread(readOnly, ports[i]) is False:
                        seen["writable"] = time.monotonic()
            return "writable" in seen

        await until(watch, "a slave promoted", step=0.02)
        self.assertIn("dead", seen, "a slave was made writable while the old master ran")
        self.assertLessEqual(seen["dead"], seen["writable"])


class FailoverTests(ReplicatedService):
    async def test_manual(self) -> None:
        cloud, manager, client, ports = await self.replicated("manual")
        await self.node3Ahead(manager, ports)
        for pid in self.masterPids(cloud, manager):
            os.kill(pid, signal.SIGKILL)

        async def lost() -> Any:
            info = await client.call("get_service_info")
            return info.get("master_lost")

        shown = await until(lost, "the master reported lost")
        self.assertEqual((shown["id"], shown["failover"]), (1, "manual"))
        self.assertIn("the cloud reports the VM failed", shown["reason"])
        self.assertIn("set_up_replica_master", shown["recover"])
        cycles = manager.cycles
        await until(lambda: manager.cycles >= cycles + 8, "eight more poll cycles")
        info = await client.call("get_service_info")
        self.assertEqual((info["master"], info["master_lost"]["id"]), (1, 1))
        self.assertNotIn("last_failover", info)

        # Node 2 misses rows that node 3 has: promoting it would lose them.
        with self.assertRaises(Conflict) as refused:
            await client.call("set_up_replica_master", {"id": 2})
        self.assertIn("node 3 is more advanced than node 2", refused.exception.message)
        result = await client.call("set_up_replica_master", {"id": 3})
        self.assertEqual((result["id"], result["previous_master"], result["following"]),
                         (3, 1, [2]))
        await self.followed(client, ports, 3, 2, 253)
        kinds = nodeProcesses(cloud.baseDir)
        self.assertEqual((len(kinds["agent"]), len(kinds["mariadbd"])), (2, 2), kinds)

    async def test_auto(self) -> None:
        cloud, manager, client, ports = await self.replicated("auto")
        await self.node3Ahead(manager, ports)
        for pid in self.masterPids(cloud, manager):
            os.kill(pid, signal.SIGKILL)

        async def promoted() -> bool:
            return (await client.call("get_service_info"))["master"] == 3

        await until(promoted, "node 3 promoted")
        await self.followed(client, ports, 3, 2, 253)
        kinds = nodeProcesses(cloud.baseDir)
        self.assertEqual((len(kinds["agent"]), len(kinds["mariadbd"])), (2, 2), kinds)

    async def test_frozen_master_fenced(self) -> None:
        """
        A master that stops answering but still runs (SIGSTOP) is ended by the
        cloud before a slave is promoted: never two writable masters.
        """
        cloud, manager, client, ports = await self.replicated("auto")
        pids = self.masterPids(cloud, manager)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        self.addCleanup(lambda: [os.kill(p, signal.SIGCONT) for p in pids if pid_alive(p)])
        await self.promotedAfterFence(pids, ports)
        await self.followed(client, ports, 2, 3, 203)


CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


class NetworkCutTests(ReplicatedService):
    """
    The master cut off from the network, still running: this test runs the
    manager and its nodes in a private network namespace (the reactor's
    thread joins it; agents and servers are started from there), where
    policy routing rules (C{ip rule ... ipproto tcp dport P unreachable})
    cut the master's agent and server ports: its processes go on, writable
    to any client of its own, but nothing reaches them.  Nothing outside the
    namespace is touched.
    """

    def inThread(self, f: Any, *args: Any) -> Deferred[Any]:
        """A new thread (started here, so in the namespace) runs C{f(*args)}."""
        d: Deferred[Any] = Deferred()

        def run() -> None:
            try:
                result = f(*args)
            except BaseException:
                failure = Failure()
                reactor.callFromThread(d.errback, failure)
            else:
                reactor.callFromThread(d.callback, result)

        threading.Thread(target=run, daemon=True).start()
        return d

    async def ip(self, *args: str) -> None:
        _out, err, code = await getProcessOutputAndValue(IP, args, env=dict(os.environ))
        if code != 0:
            raise SkipTest(f"network namespaces cannot be used here: ip {' '.join(args)}: "
                           f"{err.decode(errors='replace').strip()}")

    async def namespace(self) -> str:
        """A new network namespace, which the reactor's thread joins until the cleanups."""
        if os.geteuid() != 0:
            raise SkipTest("network namespaces need root")
        if IP is None:
            raise SkipTest("no ip command (iproute2)")
        name = f"cqtest{os.getpid()}{secrets.token_hex(3)}"
        await self.ip("netns", "add", name)
        self.addCleanup(self.ip, "netns", "del", name)
        await self.ip("-n", name, "link", "set", "lo", "up")
        # Rules may then be put before the lookup of local addresses.
        await self.ip("-n", name, "rule", "add", "pref", "100", "lookup", "local")
        await self.ip("-n", name, "rule", "del", "pref", "0", "lookup", "local")
        await self.ip("-n", name, "rule", "add", "pref", "10", "ipproto", "tcp", "dport", "1",
                      "unreachable")
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        inside = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(inside)
        finally:
            os.close(inside)

        def back() -> None:
            _setns(original)
            os.close(original)

        self.addCleanup(back)
        return name

    async def test_cut_off_master_fenced(self) -> None:
        name = await self.namespace()
        cloud, manager, client, ports = await self.replicated("auto")
        pids = self.masterPids(cloud, manager)
        agentPort = manager.nodes[1].core.record.agent_port
        assert agentPort is not None
        for port in (agentPort, ports[1]):
            for way in ("dport", "sport"):
                await self.ip("-n", name, "rule", "add", "pref", "10", "ipproto", "tcp", way,
                              str(port), "unreachable")
        with self.assertRaises(pymysql.MySQLError):
            await self.inThread(readOnly2, ports[1])
        self.assertTrue(all(pid_alive(p) for p in pids), "the cut-off master runs")
        await self.promotedAfterFence(pids, ports)
        await self.followed(client, ports, 2, 3, 203)
