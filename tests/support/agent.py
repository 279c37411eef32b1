"""
A real agent for integration tests: the whole L{AgentService} in-process on
the real reactor, listening on a free port, with its own MariaDB instance in
a temporary directory, driven over real HTTP by the project's RPC client.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import pymysql
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from conpaassql.agent.config import AgentConfig
from conpaassql.agent.tap import AgentService
from conpaassql.rpc.client import RPCClient


class RunningAgent:
    def __init__(self, service: AgentService, url: str, token: str) -> None:
        self.service = service
        self.url = url
        self.token = token
        self.client = RPCClient(url, token, timeout=60)
        #: For raw HTTP requests (treq's API), over a pool of its own that
        #: L{close} closes: the module-level C{treq.get} & co. share a global
        #: persistent pool that nothing closes, leaving a connection behind.
        self._pool = HTTPConnectionPool(reactor)
        self.http = HTTPClient(Agent(reactor, pool=self._pool))
        self.shutdowns = 0

    async def close(self) -> None:
        await self.client.close()
        await self._pool.closeCachedConnections()

    async def call(self, method: str, params: Any = None) -> Any:
        return await self.client.call(method, params)

    async def loadDump(self, content: bytes, params: dict[str, str] | None = None,
                       method: str = "create_with_MySQLdump") -> Any:
        """Upload C{content} as the C{mysqldump} file of C{method}, from a file on disk."""
        with tempfile.TemporaryFile() as f:
            f.write(content)
            f.seek(0)
            return await self.client.upload(method, params or {}, {"mysqldump": ("dump.sql", f)})

    async def state(self) -> dict[str, Any]:
        return (await self.call("get_server_state"))["return"]

    async def waitFor(self, state: str = "RUNNING", timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            current = await self.state()
            if current["state"] == state:
                return current
            if time.monotonic() > deadline:
                raise AssertionError(f"agent never reached {state}: {current}")
            await deferLater(reactor, 0.1)


async def startAgent(testcase: TestCase, config: AgentConfig | None = None) -> RunningAgent:
    """
    Start an agent in a fresh temporary state directory, wait until its
    server is RUNNING, and register its cleanup.
    """
    stateDir = os.path.abspath(testcase.mktemp())
    tokenFile = os.path.join(stateDir, "api-token")
    holder: dict[str, RunningAgent] = {}

    def stopProcess() -> None:
        holder["agent"].shutdowns += 1

    service = AgentService(
        stateDir,
        config or AgentConfig(),
        "tcp:0:interface=127.0.0.1",
        tokenFile,
        reactor=reactor,
        stopProcess=stopProcess,
    )
    service.startService()
    testcase.addCleanup(lambda: service.stopService() if service.running else None)
    port = await service.listening
    with open(tokenFile) as f:
        token = f.read().strip()
    agent = RunningAgent(service, f"http://127.0.0.1:{port.getHost().port}/", token)
    holder["agent"] = agent
    testcase.addCleanup(agent.close)
    await agent.waitFor("RUNNING")
    return agent


async def rootQuery(agent: RunningAgent, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    """
    Run one statement as root straight on the agent's server (not through
    the agent), in a thread.
    """
    connectArgs = agent.service.server.connect_args()

    def run() -> list[tuple[Any, ...]]:
        conn = pymysql.connect(**connectArgs)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    return await deferToThread(run)


async def canLogin(agent: RunningAgent, user: str, password: str) -> bool:
    """Whether C{user} logs in to the agent's server over TCP with C{password}."""
    port = agent.service.server.port

    def run() -> bool:
        try:
            # The server hashes the password's UTF-8 bytes (PyMySQL would
            # encode a str password as Latin-1).
            pymysql.connect(host="127.0.0.1", port=port, user=user,
                            password=password.encode("utf-8"), connect_timeout=10).close()
            return True
        except pymysql.err.OperationalError:
            return False

    return await deferToThread(run)
