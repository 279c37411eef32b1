"""
Provisioning benchmark (run it through tools/bench/provision).

Two things are timed, alternately, RUNS times each, in one process:

  - bare: C{mariadb-install-db} of a fresh data directory, then C{mariadbd}
    on it, until it accepts a connection (the same binaries and the same
    small InnoDB settings the agent uses);
  - node: a real manager (in this process, on the LOCAL driver, with its
    default configuration unless --poll-interval is given) asked over HTTP
    for one node with add_nodes, until get_node_info says RUNNING (polled
    every 20 ms); the node is then removed before the next run.

It prints each run, the medians, and their ratio.  The LOCAL driver's nodes
copy a datadir template (made at its first create, so in run 1) instead of
running mariadb-install-db; each run also times that copy (C{cp -R}, as the
agent does it) beside the bare instance's mariadb-install-db.

Last measured (2026-11-25, the 2-core machine shared with other helpers'
test runs; 7 runs each, medians): with the least load (load average ~3)
bare MariaDB 0.74 s, add_nodes -> RUNNING 0.81 s, ratio 1.10x;
mariadb-install-db 0.58 s against a template copy 0.07 s.  Under heavy load
(load average 5-9) 0.62x, 0.70x, 0.76x and 0.73x (9 runs): the
installer suffers more from the load than the copy.  Run 1 pays for making
the template (2.5 to 5.4 s then).  Before the template: 0.61 s against
1.05 s, 1.73x.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from typing import Any

import pymysql
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from conpaassql.agent.config import find_binary
from benchlib import endManager, runManagerBench  # type: ignore[import-not-found]

from conpaassql.manager.config import ManagerConfig
from conpaassql.manager.tap import ManagerService
from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.errors import NotFound

SMALL = ["--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M"]


def bareInstance(base: str) -> tuple[float, float]:
    """
    Seconds from mariadb-install-db to a first accepted connection, and of
    mariadb-install-db alone (blocking).
    """
    installDb = find_binary(["mariadb-install-db", "mysql_install_db"])
    mysqld = find_binary(["mariadbd", "mysqld"])
    assert installDb and mysqld, "MariaDB is not installed (tools/setup installs it)"
    datadir = os.path.join(base, "data")
    sock = os.path.join(base, "s.sock")
    user = ["--user=root"] if os.geteuid() == 0 else []
    tmpdir = os.path.join(base, "tmp")
    os.makedirs(tmpdir)
    small = [*SMALL, f"--tmpdir={tmpdir}"]
    started = time.monotonic()
    subprocess.run(
        [installDb, "--no-defaults", f"--datadir={datadir}",
         "--auth-root-authentication-method=normal", "--skip-test-db", *user, *small],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base,
    )
    installed = time.monotonic() - started
    server = subprocess.Popen(
        [mysqld, "--no-defaults", f"--datadir={datadir}", f"--socket={sock}", "--port=0",
         "--skip-networking", f"--pid-file={base}/mysqld.pid",
         f"--log-error={base}/error.log", *user, *small],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base,
    )
    try:
        while True:
            try:
                pymysql.connect(unix_socket=sock, user="root", connect_timeout=2).close()
                break
            except pymysql.err.MySQLError:
                if server.poll() is not None:
                    raise RuntimeError(f"mariadbd exited; see {base}/error.log") from None
                time.sleep(0.02)
        return time.monotonic() - started, installed
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def templateCopy(templates: str, base: str) -> float | None:
    """Seconds to copy the LOCAL driver's datadir template as an agent does (blocking)."""
    names = os.listdir(templates) if os.path.isdir(templates) else []
    if not names:
        return None
    started = time.monotonic()
    subprocess.run(["cp", "-R", "--preserve=mode,timestamps", "--reflink=auto", "--",
                    os.path.join(templates, names[0], "data"), os.path.join(base, "copy")],
                   check=True)
    return time.monotonic() - started


async def nodeRun(client: RPCClient, reactor: Any) -> float:
    started = reactor.seconds()
    added = await client.call("add_nodes", {"function": "agent"})
    nodeId = added["serviceNode"]["id"]
    while True:
        info = (await client.call("get_node_info", {"serviceNodeId": nodeId}))["serviceNode"]
        if info["state"] == "RUNNING":
            break
        if info["state"] == "ERROR":
            raise RuntimeError(f"node {nodeId} in ERROR: {info.get('error')}")
        await deferLater(reactor, 0.02, lambda: None)
    elapsed = reactor.seconds() - started
    await client.call("remove_nodes", {"serviceNodeId": nodeId})
    while True:  # until it is TERMINATED
        try:
            await client.call("get_node_info", {"serviceNodeId": nodeId})
        except NotFound:
            break
        await deferLater(reactor, 0.05, lambda: None)
    return float(elapsed)


async def main(reactor: Any, runs: int, overrides: dict[str, float], keep: bool) -> None:
    work = tempfile.mkdtemp(prefix="conpaassql-bench-")
    config = ManagerConfig(**overrides)  # type: ignore[arg-type]
    service = ManagerService(work + "/manager", config, "tcp:0:interface=127.0.0.1",
                             work + "/manager/api-token", reactor=reactor,
                             stopProcess=lambda: None)
    service.startService()
    try:
        port = await service.listening
        with open(work + "/manager/api-token") as f:
            token = f.read().strip()
        client = RPCClient(f"http://127.0.0.1:{port.getHost().port}/", token, reactor=reactor)
        bare: list[float] = []
        node: list[float] = []
        install: list[float] = []
        copy: list[float] = []
        templates = os.path.join(work, "manager", "local-cloud", "templates")
        print(f"poll_interval {config.poll_interval:g} s, boot_poll_interval "
              f"{config.bootPollInterval:g} s; {runs} runs of each, alternating")
        for i in range(runs):
            base = os.path.join(work, f"bare-{i}")
            os.makedirs(base)
            total, installed = await deferToThread(bareInstance, base)
            bare.append(total)
            install.append(installed)
            copied = await deferToThread(templateCopy, templates, base)
            if copied is not None:
                copy.append(copied)
            shutil.rmtree(base, ignore_errors=True)
            node.append(await nodeRun(client, reactor))
            copyText = "no template yet" if copied is None else f"template copy {copied:.2f} s"
            print(f"run {i + 1}: bare MariaDB {bare[-1]:.2f} s (mariadb-install-db "
                  f"{installed:.2f} s; {copyText}), add_nodes -> RUNNING {node[-1]:.2f} s",
                  flush=True)
        await client.close()
        b, n = statistics.median(bare), statistics.median(node)
        print(f"median: bare MariaDB {b:.2f} s, add_nodes -> RUNNING {n:.2f} s, "
              f"ratio {n / b:.2f}x (goal <= 1.3x)")
        if copy:
            print(f"median: mariadb-install-db {statistics.median(install):.2f} s, "
                  f"template copy {statistics.median(copy):.3f} s")
    finally:
        await endManager(reactor, service, work, keep)


def run() -> None:
    runManagerBench(__doc__, main, ("--runs", 5), [
        ("poll_interval", "the manager's poll_interval (default: its default)"),
        ("boot_poll_interval", "the manager's boot_poll_interval (default: its default)"),
    ])


if __name__ == "__main__":
    run()
