"""
Failover benchmark (run it through tools/bench/failover).

Each round: a real manager (in this process, LOCAL driver, C{failover =
auto}, the other settings its defaults unless given) makes three nodes,
node A the master with a user and a table, B and C slaves seeded from it.
Then A is killed: SIGKILL of its agent and of its C{mariadbd}, with the
LOCAL cloud's agent restart off (C{LOCAL_AGENT_RESTART = false}), so that
it is a crashed VM, not an agent the cloud starts again.  From the kill on,
a client tries every 20 ms to commit a row on B and on C; the round's
figures are the seconds until one of them accepts it (the new master takes
writes), and until the other slave has that row (it follows the new
master).  The manager's own account is printed too: how long the master
was down before it was declared lost and failed over (C{detected_after},
at least C{master_lost_timeout}), and how long the failover itself took
(fence, choose, promote).

Last measured (2-core machine shared with other test runs, 3 rounds each):

  - defaults (poll_interval 2 s, master_lost_timeout 10 s): new master
    writable after 11.5 s (median; 11.2-12.1), the other slave following it
    after 11.8 s; the manager declared the loss 10.6 s after the master
    went down and the failover itself took 0.5 s;
  - poll_interval 0.5 s, master_lost_timeout 3 s: writable after 3.7 s,
    followed after 3.8 s; declared after 3.0 s, failover 0.2 s.
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time
from types import MappingProxyType
from typing import Any

import pymysql
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from benchlib import endManager, runManagerBench  # type: ignore[import-not-found]

from conpaassql.manager.config import ManagerConfig
from conpaassql.manager.tap import ManagerService
from conpaassql.rpc.client import RPCClient

PASSWORD = "bench pw 1"
DUMP = b"CREATE DATABASE IF NOT EXISTS bench;\nUSE bench;\n" \
       b"CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB;\n"


def _connect(port: int) -> Any:
    return pymysql.connect(host="127.0.0.1", port=port, user="app", password=PASSWORD,
                           database="bench", connect_timeout=2, read_timeout=5,
                           write_timeout=5, autocommit=True)


def firstWritable(ports: dict[int, int], row: int, deadline: float) -> tuple[int, float]:
    """Commit C{row} on each port in turn every 20 ms until one accepts it (blocking)."""
    while time.monotonic() < deadline:
        for nodeId, port in ports.items():
            try:
                connection = _connect(port)
            except pymysql.MySQLError:
                continue
            try:
                with connection.cursor() as cursor:
                    cursor.execute("INSERT INTO t (id) VALUES (%s)", (row,))
                return nodeId, time.monotonic()
            except pymysql.MySQLError:
                pass
            finally:
                connection.close()
        time.sleep(0.02)
    raise RuntimeError("no slave accepted a write in time")


def hasRow(port: int, row: int, deadline: float) -> float:
    """Wait until the server on C{port} has C{row} (blocking); when it did."""
    while time.monotonic() < deadline:
        try:
            connection = _connect(port)
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1 FROM t WHERE id = %s", (row,))
                    if cursor.fetchall():
                        return time.monotonic()
            finally:
                connection.close()
        except pymysql.MySQLError:
            pass
        time.sleep(0.02)
    raise RuntimeError("the other slave did not get the row in time")


async def until(reactor: Any, check: Any, what: str, timeout: float = 300) -> Any:
    deadline = reactor.seconds() + timeout
    while True:
        value = await check()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)


async def oneRound(reactor: Any, client: RPCClient, manager: Any, work: str,
                   row: int) -> dict[str, float]:
    added = await client.call("add_nodes", {"function": "agent", "count": 3})
    ids = [n["id"] for n in added["serviceNode"]]
    master, slaves = ids[0], ids[1:]

    async def info(nodeId: int) -> dict[str, Any]:
        return dict((await client.call("get_node_info", {"serviceNodeId": nodeId}))
                    ["serviceNode"])

    async def ready(nodeIds: list[int]) -> bool:
        for i in nodeIds:
            shown = await info(i)
            if shown["state"] == "ERROR":
                raise RuntimeError(f"node {i} in ERROR: {shown.get('error')}")
            if not shown["isRunningMySQL"] or shown.get("unreachable"):
                return False
        return True

    await until(reactor, lambda: ready(ids), "three RUNNING nodes")
    await client.call("set_up_replica_master", {"id": master})
    await until(reactor, lambda: ready([master]), "the master running")
    await client.call("configure_user", {"serviceNodeId": master, "username": "app",
                                         "password": PASSWORD, "databases": ["bench"]})
    path = os.path.join(work, "bench.sql")
    with open(path, "wb") as out:
        out.write(DUMP)
    with open(path, "rb") as dump:
        await client.upload("send_mysqldump", {"serviceNodeId": str(master)},
                            {"mysqldump": ("bench.sql", dump)}, timeout=120)
    for i in slaves:
        await client.call("set_up_replica_slave", {"id": i})

    async def slavesReady() -> bool:
        for i in slaves:
            shown = await info(i)
            if shown.get("replication", {}).get("setup", {}).get("error"):
                raise RuntimeError(f"node {i}: {shown}")
            if shown["role"] != "SLAVE":
                return False
        return True

    await until(reactor, slavesReady, "two slaves")
    ports = {i: (await info(i))["mysqld_port"] for i in ids}
    nodeDir = os.path.join(work, "manager", "local-cloud", manager.nodes[master].core.record.name)
    pids = []
    for pidFile in ("twistd.pid", "agent/mysql/mysqld.pid"):
        with open(os.path.join(nodeDir, pidFile)) as f:
            pids.append(int(f.read()))

    killed = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = killed + 300
    newMaster, writable = await deferToThread(
        firstWritable, {i: ports[i] for i in slaves}, row, deadline)
    other = next(i for i in slaves if i != newMaster)
    followed = await deferToThread(hasRow, ports[other], row, deadline)

    async def reported() -> Any:
        return (await client.call("get_service_info")).get("last_failover")

    last = await until(reactor, reported, "the failover reported")
    await until(reactor, lambda: ready([other]), "the other slave")
    # The slave goes first: the new master has no slave then.
    await client.call("remove_nodes", {"serviceNodeId": other})
    await until(reactor, lambda: _gone(client, other), "the slave removed")
    await client.call("remove_nodes", {"serviceNodeId": newMaster})
    await until(reactor, lambda: _gone(client, newMaster), "the master removed")
    return {"writable": writable - killed, "followed": followed - killed,
            "detected_after": float(last["detected_after"]), "failover": float(last["seconds"])}


async def _gone(client: RPCClient, nodeId: int) -> bool:
    return nodeId not in (await client.call("list_nodes"))["serviceNode"]


async def main(reactor: Any, rounds: int, overrides: dict[str, float], keep: bool) -> None:
    work = tempfile.mkdtemp(prefix="conpaassql-bench-failover-")
    config = ManagerConfig(failover="auto",
                           driverSettings=MappingProxyType({"LOCAL_AGENT_RESTART": "false"}),
                           **overrides)  # type: ignore[arg-type]
    service = ManagerService(work + "/manager", config, "tcp:0:interface=127.0.0.1",
                             work + "/manager/api-token", reactor=reactor,
                             stopProcess=lambda: None)
    service.startService()
    try:
        port = await service.listening
        with open(work + "/manager/api-token") as f:
            token = f.read().strip()
        client = RPCClient(f"http://127.0.0.1:{port.getHost().port}/", token, reactor=reactor,
                           timeout=120)
        print(f"failover auto, poll_interval {config.poll_interval:g} s, master_lost_timeout "
              f"{config.master_lost_timeout:g} s, probe_timeout {config.probe_timeout:g} s; "
              f"{rounds} rounds", flush=True)
        results = []
        for i in range(rounds):
            r = await oneRound(reactor, client, service.manager, work, i + 1)
            results.append(r)
            print(f"round {i + 1}: new master writable after {r['writable']:.2f} s, the other "
                  f"slave follows it after {r['followed']:.2f} s (manager: lost declared "
                  f"{r['detected_after']:.2f} s after the master went down, failover "
                  f"{r['failover']:.2f} s)", flush=True)
        await client.close()
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(f"median: writable {med['writable']:.2f} s, followed {med['followed']:.2f} s "
              f"(goal < 15 s); declared lost after {med['detected_after']:.2f} s, failover "
              f"{med['failover']:.2f} s")
    finally:
        await endManager(reactor, service, work, keep)


def run() -> None:
    runManagerBench(__doc__, main, ("--rounds", 3), [
        ("poll_interval", "the manager's poll_interval (default: its default, 2)"),
        ("master_lost_timeout", "the manager's master_lost_timeout (default: its default, 10)"),
    ])


if __name__ == "__main__":
    run()
