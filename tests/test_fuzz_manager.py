"""
Property-based fuzzing of a real manager over real HTTP (see
L{tests.support.fuzz}): on the fake driver with fake agents served over
HTTP (fast, the full run), and a smaller run on the LOCAL driver, whose
node is a real agent with its real mariadbd.  Every request gets one
well-formed reply with the code its input deserves, and the manager is
still healthy after each property: same nodes, RUNNING, not stopped.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from conpaassql.rpc.client import RPCClient
from tests.support.fuzz import EXAMPLES, ServiceFuzzer, openSpoolFiles
from tests.support.localmanager import startLocalManager
from tests.support.mariadb import skip_unless_mariadb
from tests.test_manager_api import ManagerFixture

DESTRUCTIVE = frozenset({
    "add_nodes", "remove_nodes", "delete_nodes", "shutdown", "configure_user", "delete_user",
    "send_mysqldump", "set_up_replica_master", "set_up_replica_slave",
})


class ManagerFuzzer(ServiceFuzzer):
    destructive = DESTRUCTIVE
    client: RPCClient
    stateDir: str

    def stopped(self) -> int:
        raise NotImplementedError

    async def healthy(self) -> None:
        info = await self.client.call("get_service_info")
        assert isinstance(self, TestCase)
        self.assertEqual(info["state"], "RUNNING")
        self.assertEqual(info["nodes"], {"RUNNING": 1})
        self.assertEqual(await self.client.call("list_nodes"), {"serviceNode": [1]})
        self.assertEqual(self.stopped(), 0)
        self.assertEqual(openSpoolFiles(os.path.join(self.stateDir, "uploads")), [])


class FakeDriverFuzzTests(ManagerFuzzer, TestCase):
    timeout = 900

    def stopped(self) -> int:
        return self.m.stops

    async def test_fuzz(self) -> None:
        self.m = await ManagerFixture(self).start()
        await self.m.call("add_nodes", {"function": "agent"})
        await self.m.running(1)
        self.url, self.token, self.client = self.m.url, self.m.token, self.m.client
        self.stateDir = self.m.stateDir
        await self.fuzzAll()


class LocalDriverFuzzTests(ManagerFuzzer, TestCase):
    """A smaller run on the LOCAL driver: its node is a real agent and mariadbd."""

    skip = skip_unless_mariadb()
    timeout = 900
    examples = max(3, EXAMPLES // 4)

    stops: list[int]

    def stopped(self) -> int:
        return len(self.stops)

    async def test_fuzz(self) -> None:
        m = await startLocalManager(self, nodes=1)
        self.stops = m.stops
        self.stateDir, self.url, self.token, self.client = (
            m.cloud.stateDir, m.url, m.token, m.client)
        users = await self.client.call("get_users", {"serviceNodeId": 1})
        await self.fuzzAll()
        self.assertEqual(await self.client.call("get_users", {"serviceNodeId": 1}), users)
