"""
Property-based fuzzing of a real agent (with its real mariadbd) over real
HTTP: random envelopes, parameters of wrong types, 100k nesting levels,
multi-megabyte values, invalid UTF-8, random query strings, cut-off
uploads.  Every request gets exactly one well-formed reply with the code
its input deserves (never a 500 or a -32603), and the agent and its server
are still healthy after each property (L{tests.support.fuzz}).
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from tests.support.agent import startAgent
from tests.support.fuzz import ServiceFuzzer, openSpoolFiles
from tests.support.mariadb import skip_unless_mariadb


class AgentFuzzTests(ServiceFuzzer, TestCase):
    skip = skip_unless_mariadb()
    timeout = 900
    destructive = frozenset({
        "create_server", "start_server", "stop_server", "restart_server",
        "set_server_configuration", "configure_user", "delete_user", "create_with_MySQLdump",
        "send_mysqldump", "shutdown",
    })

    async def healthy(self) -> None:
        state = await self.agent.state()
        self.assertEqual(state["state"], "RUNNING")
        self.assertEqual(self.agent.shutdowns, 0)
        users = await self.agent.call("get_all_users")
        self.assertEqual(users["return"], self.users)
        spool = os.path.join(self.agent.service.stateDir, "uploads")
        self.assertEqual(openSpoolFiles(spool), [])

    async def test_fuzz(self) -> None:
        self.agent = await startAgent(self)
        self.url, self.token = self.agent.url, self.agent.token
        self.users = (await self.agent.call("get_all_users"))["return"]
        await self.fuzzAll()
