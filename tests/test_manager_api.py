"""
The manager's API over real HTTP: a real L{ManagerService} (registry in
SQLite through adbapi, real JSON-RPC server, real agent clients) on the
fake driver, whose nodes are small fake agents served over real HTTP.
"""

from __future__ import annotations

import io
import json
import os
import stat
from typing import Any

import treq
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from conpaassql.client.cli import run
from conpaassql.iaas.base import NodeSpec, vmName
from conpaassql.manager.config import ManagerConfig
from conpaassql.manager.tap import ManagerService
from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.errors import (
    InvalidParams,
    MethodNotFound,
    NotFound,
    RPCError,
    WrongState,
)
from tests.support.fakeagents import FakeAgentAPI, listenFakeAgent
from tests.support.fakedriver import FakeDriver

reactor: Any = _reactor


async def waitFor(predicate: Any, what: str, timeout: float = 20.0) -> None:
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


class ManagerFixture:
    """A real manager service on tcp:0 with the fake driver and fake agents."""

    def __init__(self, testcase: TestCase, stateDir: str | None = None) -> None:
        self.testcase = testcase
        self.stateDir = stateDir or os.path.abspath(testcase.mktemp())
        self.agents: dict[int, FakeAgentAPI] = {}
        self.tokens: dict[int, str] = {}
        self.ports: list[Any] = []
        self.driver = FakeDriver(reactor, agentPort=self._startAgent)
        self.stops = 0
        self.config = ManagerConfig(poll_interval=0.05, boot_timeout=30, probe_timeout=5)

    def _startAgent(self, spec: NodeSpec) -> int:
        api, port = listenFakeAgent(reactor, spec.context["AGENT_TOKEN"])
        self.agents[spec.nodeId] = api
        self.tokens[spec.nodeId] = spec.context["AGENT_TOKEN"]
        self.ports.append(port)
        return int(port.getHost().port)

    def _stopProcess(self) -> None:
        self.stops += 1

    async def start(self) -> ManagerFixture:
        self.service = ManagerService(
            self.stateDir, self.config, "tcp:0:interface=127.0.0.1",
            os.path.join(self.stateDir, "api-token"),
            reactor=reactor, driverFactory=self.driver.bind, stopProcess=self._stopProcess,
        )
        self.service.startService()
        self.testcase.addCleanup(self.stop)
        port = await self.service.listening
        self.url = f"http://127.0.0.1:{port.getHost().port}/"
        with open(os.path.join(self.stateDir, "api-token")) as f:
            self.token = f.read().strip()
        self.client = RPCClient(self.url, self.token, reactor=reactor, timeout=20)
        return self

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()
        await self.client.close()
        for port in self.ports:
            await port.stopListening()
        self.ports = []

    async def call(self, method: str, params: Any = None) -> Any:
        return await self.client.call(method, params or {})

    def state(self, nodeId: int) -> str:
        manager = self.service.manager
        assert manager is not None
        node = manager.nodes.get(nodeId)
        return node.state if node else "TERMINATED"

    async def running(self, *ids: int) -> None:
        await waitFor(lambda: all(self.state(i) == "RUNNING" for i in ids),
                      f"nodes {ids} RUNNING")


class APITests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.m = await ManagerFixture(self).start()

    async def raw(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {b"Authorization": [b"Bearer " + self.m.token.encode()]}
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.request(method, url, headers=headers, pool=pool, **kwargs)
        body = await treq.json_content(response)
        return response.code, body

    async def test_seed_request_forms(self) -> None:
        code, body = await self.raw(
            "POST", self.m.url,
            data=b'{"params": {"function": "agent"}, "method": "add_nodes", "id": "1"}',
        )
        self.assertEqual(code, 200)
        assert self.m.service.manager is not None
        tag = self.m.service.manager.serviceTag
        assert tag is not None
        self.assertEqual(body, {
            "result": {"serviceNode": {"id": 1, "ip": None, "state": "PENDING",
                                       "name": vmName(tag, 1)}},
            "error": None, "id": "1",
        })
        await self.m.running(1)
        code, body = await self.raw(
            "GET", self.m.url + "?params=%7B%22serviceNodeId%22%3A+%221%22%7D"
                                "&method=get_node_info&id=1",
        )
        self.assertEqual(body["error"], None)
        self.assertEqual(body["id"], "1")
        node = body["result"]["serviceNode"]
        port = self.m.driver.byName(vmName(tag, 1)).agentPort  # type: ignore[union-attr]
        self.assertEqual(node, {
            "id": 1, "ip": "127.0.0.1", "isRunningMySQL": True, "state": "RUNNING",
            "role": None, "name": vmName(tag, 1), "port": port, "mysqld_port": 3456,
            "vm_id": node["vm_id"],
        })
        code, body = await self.raw("GET", self.m.url + "?method=list_nodes&id=1")
        self.assertEqual(body, {"result": {"serviceNode": [1]}, "error": None, "id": "1"})
        code, body = await self.raw("GET", self.m.url + "?method=get_service_info&id=1")
        self.assertEqual(body["result"], {"state": "RUNNING", "type": "conpaassql",
                                          "nodes": {"RUNNING": 1}, "master": None})
        code, body = await self.raw(
            "POST", self.m.url,
            data=b'{"params": {"serviceNodeId": "1"}, "method": "remove_nodes", "id": "1"}',
        )
        self.assertEqual(body, {"result": {"result": "OK"}, "error": None, "id": "1"})

    async def test_add_count_and_remove_alias(self) -> None:
        added = await self.m.call("add_nodes", {"function": "agent", "count": 3})
        nodes = added["serviceNode"]
        self.assertEqual([n["id"] for n in nodes], [1, 2, 3])
        self.assertEqual({n["state"] for n in nodes}, {"PENDING"})
        await self.m.running(1, 2, 3)
        self.assertEqual(await self.m.call("delete_nodes", {"serviceNodeId": 2}),
                         {"result": "OK"})
        self.assertEqual(await self.m.call("list_nodes"), {"serviceNode": [1, 3]})
        await waitFor(lambda: self.m.state(2) == "TERMINATED", "node 2 TERMINATED")
        self.assertEqual(len(self.m.driver.ours()), 2)
        with self.assertRaises(NotFound) as e:
            await self.m.call("get_node_info", {"serviceNodeId": 2})
        self.assertIn("no node 2", e.exception.message)
        # Ids are never reused.
        added = await self.m.call("add_nodes", {})
        self.assertEqual(added["serviceNode"]["id"], 4)

    async def test_terminating_not_listed(self) -> None:
        """
        A node being removed is no longer one of the service's nodes in
        list_nodes; get_node_info shows it TERMINATING until it is gone and
        get_service_info counts it.
        """
        from conpaassql.iaas.base import CloudFailure

        await self.m.call("add_nodes", {"function": "agent", "count": 2})
        await self.m.running(1, 2)
        self.m.driver.failTerminate = CloudFailure("the cloud is slow today")
        self.assertEqual(await self.m.call("remove_nodes", {"serviceNodeId": 2}),
                         {"result": "OK"})
        self.assertEqual(await self.m.call("list_nodes"), {"serviceNode": [1]})
        info = await self.m.call("get_node_info", {"serviceNodeId": 2})
        self.assertEqual(info["serviceNode"]["state"], "TERMINATING")
        service = await self.m.call("get_service_info")
        self.assertEqual(service["nodes"].get("TERMINATING"), 1, service)
        self.m.driver.failTerminate = None
        await waitFor(lambda: self.m.state(2) == "TERMINATED", "node 2 TERMINATED")
        self.assertEqual(await self.m.call("list_nodes"), {"serviceNode": [1]})

    async def test_bad_input(self) -> None:
        cases: list[tuple[str, dict[str, Any], type[RPCError], str]] = [
            ("add_nodes", {"function": "db"}, InvalidParams, "'function' must be one of: agent"),
            ("add_nodes", {"count": 0}, InvalidParams, "'count' must be at least 1"),
            ("add_nodes", {"count": 1000}, InvalidParams, "'count' must be at most 50"),
            ("add_nodes", {"count": "many"}, InvalidParams, "'count' must be an integer"),
            ("add_nodes", {"colour": "red"}, InvalidParams, "has no parameter 'colour'"),
            ("remove_nodes", {}, InvalidParams, "missing parameter 'serviceNodeId'"),
            ("remove_nodes", {"serviceNodeId": "abc"}, InvalidParams, "must be an integer"),
            ("remove_nodes", {"serviceNodeId": 99}, NotFound, "no node 99"),
            ("get_node_info", {"serviceNodeId": 99}, NotFound, "no node 99"),
            ("get_node_info", {"serviceNodeId": -1}, InvalidParams, "at least 1"),
            ("configure_user", {"serviceNodeId": "some", "username": "a", "password": "b"},
             InvalidParams, "a node id (a positive integer) or \"all\""),
            ("configure_user", {"serviceNodeId": 5, "username": "a", "password": "b"},
             NotFound, "no node 5"),
            ("configure_user", {"serviceNodeId": "all", "username": "a"},
             InvalidParams, "missing parameter 'password'"),
            ("configure_user", {"serviceNodeId": "all", "username": "a", "password": "b"},
             WrongState, "no running node"),
            ("get_users", {}, WrongState, "no running node"),
            ("send_mysqldump", {"serviceNodeId": 1}, InvalidParams, "missing file 'mysqldump'"),
            ("set_up_replica_master", {"id": 1}, NotFound, "no node 1"),
            ("set_up_replica_master", {"id": 0}, InvalidParams, "'id'"),
            ("set_up_replica_slave", {"id": 2}, NotFound, "no node 2"),
            ("getLog", {}, MethodNotFound, "no method named 'getLog'"),
        ]
        for method, params, error, message in cases:
            with self.assertRaises(error, msg=(method, params)) as e:
                await self.m.call(method, params)
            self.assertIn(message, e.exception.message, (method, params))
        self.assertEqual(await self.m.call("list_nodes"), {"serviceNode": []})

    async def test_wrong_token(self) -> None:
        client = RPCClient(self.m.url, "wrong", reactor=reactor)
        self.addCleanup(client.close)
        with self.assertRaises(RPCError) as e:
            await client.call("list_nodes")
        self.assertEqual(e.exception.code, -32001)

    async def test_node_not_running_yet(self) -> None:
        self.m.driver.bootDelay = 1000
        await self.m.call("add_nodes", {})
        with self.assertRaises(WrongState) as e:
            await self.m.call("configure_user",
                              {"serviceNodeId": 1, "username": "a", "password": "b"})
        self.assertIn("node 1 is PENDING", e.exception.message)

    async def test_users(self) -> None:
        await self.m.call("add_nodes", {"count": 2})
        await self.m.running(1, 2)
        result = await self.m.call(
            "configure_user", {"serviceNodeId": "all", "username": "app", "password": "pw"})
        self.assertEqual(result, {"1": "OK", "2": "OK"})
        self.assertEqual(self.m.agents[1].users, {"root": "localhost", "app": "%"})
        self.assertEqual(self.m.agents[2].users, {"root": "localhost", "app": "%"})
        await self.m.call("configure_user", {"serviceNodeId": "2", "username": "bob",
                                             "password": "pw", "host": "10.0.0.%"})
        self.assertEqual(self.m.agents[2].users["bob"], "10.0.0.%")
        self.assertNotIn("bob", self.m.agents[1].users)
        users = await self.m.call("get_users")
        self.assertEqual(users["1"], [{"username": "app", "location": "%"},
                                      {"username": "root", "location": "localhost"}])
        self.assertEqual(len(users["2"]), 3)
        self.assertEqual(list(await self.m.call("get_users", {"serviceNodeId": 1})), ["1"])
        with self.assertRaises(NotFound) as e:
            await self.m.call("delete_user", {"serviceNodeId": 1, "username": "bob"})
        self.assertEqual(e.exception.message, "node 1: no user 'bob'")
        with self.assertRaises(RPCError) as e2:
            await self.m.call("delete_user", {"serviceNodeId": "all", "username": "bob"})
        self.assertEqual(e2.exception.code, 1006)
        self.assertIn("delete_user failed on 1 of 2 nodes (node 1: error 1002: no user 'bob')",
                      e2.exception.message)
        self.assertEqual(await self.m.call("delete_user", {"serviceNodeId": "all",
                                                           "username": "app"}),
                         {"1": "OK", "2": "OK"})

    async def test_error_nodes_skipped_by_all(self) -> None:
        from conpaassql.iaas.base import CloudFailure

        await self.m.call("add_nodes", {})
        self.m.driver.failCreate = CloudFailure("quota", transient=False)
        await self.m.call("add_nodes", {})
        await self.m.running(1)
        result = await self.m.call(
            "configure_user", {"serviceNodeId": "all", "username": "app", "password": "pw"})
        self.assertEqual(result["1"], "OK")
        self.assertIn("skipped: node is in ERROR", result["2"])
        info = await self.m.call("get_node_info", {"serviceNodeId": 2})
        self.assertEqual(info["serviceNode"]["error"], "the cloud refused the VM: quota")

    async def test_send_mysqldump_streams_to_agents(self) -> None:
        await self.m.call("add_nodes", {"count": 2})
        await self.m.running(1, 2)
        data = os.urandom(1_500_000) + b"\r\n--x--\r\n" + b"INSERT INTO t VALUES (1);\n" * 5000
        path = os.path.join(self.m.stateDir, "dump.sql")
        with open(path, "wb") as f:
            f.write(data)
        with open(path, "rb") as f:
            result = await self.m.client.upload(
                "send_mysqldump", {"serviceNodeId": "2", "database": "shop"},
                {"mysqldump": ("dump.sql", f)})
        self.assertEqual(result, {"return": "OK", "bytes": len(data)})
        self.assertEqual(self.m.agents[2].dumps, [("dump.sql", data, {"database": "shop"})])
        self.assertEqual(self.m.agents[1].dumps, [])
        with open(path, "rb") as f:
            result = await self.m.client.upload(
                "send_mysqldump", {"serviceNodeId": "all"}, {"mysqldump": ("d.sql", f)})
        self.assertEqual(result, {"1": {"return": "OK", "bytes": len(data)},
                                  "2": {"return": "OK", "bytes": len(data)}})
        self.assertEqual(self.m.agents[1].dumps[0][1], data)
        self.assertEqual(self.m.agents[2].dumps[1][1], data)

    async def test_shutdown(self) -> None:
        await self.m.call("add_nodes", {"count": 2})
        await self.m.running(1, 2)
        self.assertEqual(await self.m.call("shutdown"), {"state": "EPILOGUE"})
        with self.assertRaises(WrongState):
            await self.m.call("add_nodes", {})
        await waitFor(lambda: self.m.stops == 1, "the manager to stop")
        info = await self.m.call("get_service_info")
        self.assertEqual(info, {"state": "STOPPED", "type": "conpaassql", "nodes": {},
                                "master": None})
        self.assertEqual(self.m.driver.ours(), [])

    async def test_state_dir(self) -> None:
        def mode(*names: str) -> int:
            return stat.S_IMODE(os.stat(os.path.join(self.m.stateDir, *names)).st_mode)

        self.assertEqual(mode(), 0o700)
        self.assertEqual(mode("api-token"), 0o600)
        self.assertEqual(mode("registry.sqlite"), 0o600)
        with open(os.path.join(self.m.stateDir, "manager-url")) as f:
            self.assertEqual(f.read().strip(), self.m.url)

    async def test_list_methods(self) -> None:
        names = {m["name"] for m in await self.m.call("list_methods")}
        self.assertEqual(names, {
            "add_nodes", "remove_nodes", "list_nodes", "get_node_info", "get_service_info",
            "shutdown", "configure_user", "delete_user", "get_users", "send_mysqldump",
            "set_up_replica_master", "set_up_replica_slave", "get_service_performance",
            "list_methods",
        })


class LogFileTests(TestCase):
    async def test_logfile(self) -> None:
        path = os.path.abspath(self.mktemp())
        m = ManagerFixture(self)
        m.config = ManagerConfig(poll_interval=0.05, logfile=path)
        await m.start()
        await m.call("add_nodes", {})
        await m.running(1)
        await m.stop()
        with open(path) as f:
            text = f.read()
        self.assertIn("manager API listening at " + m.url, text)
        self.assertIn("node 1: BOOTING -> RUNNING", text)
        self.assertNotIn(m.tokens[1], text)


class RestartTests(TestCase):
    async def test_restart_keeps_nodes(self) -> None:
        first = await ManagerFixture(self).start()
        await first.call("add_nodes", {"count": 2})
        await first.running(1, 2)
        await first.call("remove_nodes", {"serviceNodeId": 1})
        await waitFor(lambda: first.state(1) == "TERMINATED", "node 1 TERMINATED")
        await first.service.stopService()
        second = ManagerFixture(self, stateDir=first.stateDir)
        second.driver = first.driver
        second.agents = first.agents
        await second.start()
        self.assertEqual(await second.call("list_nodes"), {"serviceNode": [2]})
        await second.running(2)
        self.assertEqual(second.token, first.token)
        added = await second.call("add_nodes", {})
        self.assertEqual(added["serviceNode"]["id"], 3)
        await second.running(3)


class CLITests(TestCase):
    """The command-line client against the real manager."""

    async def test_cli(self) -> None:
        m = await ManagerFixture(self).start()
        port = m.url.rsplit(":", 1)[1].strip("/")
        env = {"CONPAASSQL_TOKEN": m.token, "HOME": m.stateDir}

        async def cli(*argv: str) -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            code = await run(["127.0.0.1", port, *argv], out, err, environ=env,
                             pollInterval=0.05)
            return code, out.getvalue(), err.getvalue()

        code, out, _ = await cli("add_nodes", "agent", "2")
        self.assertEqual(code, 0)
        self.assertIn("added node 1 (", out)
        self.assertIn("added node 2 (", out)
        code, out, _ = await cli("wait_nodes", "30")
        self.assertEqual(code, 0, out)
        self.assertTrue(out.endswith("all 2 nodes RUNNING\n"), out)
        self.assertEqual(await cli("list_nodes"), (0, "1\n2\n", ""))
        code, out, _ = await cli("configure_user", "all", "app", "pw")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("configured user 'app' on every node\n"), out)
        code, out, _ = await cli("--json", "get_users", "1")
        self.assertEqual(json.loads(out)["1"][0], {"username": "app", "location": "%"})
        path = os.path.join(m.stateDir, "small.sql")
        with open(path, "wb") as f:
            f.write(b"SELECT 1;\n")
        code, out, err = await cli("send_mysqldump", "all", path)
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith("loaded small.sql on every node\n"), out)
        self.assertEqual(m.agents[2].dumps[0][1], b"SELECT 1;\n")
        code, out, _ = await cli("get_node_info", "2")
        self.assertIn("state:          RUNNING", out)
        code, _, err = await cli("get_node_info", "9")
        self.assertEqual(err, "error 1002: no node 9 in this service (list_nodes lists them)\n")
        self.assertEqual(await cli("delete_nodes", "1"), (0, "removed node 1\n", ""))
        # The fake agents know no replication: the agent's answer is passed on.
        code, _, err = await cli("set_up_replica_master", "2")
        self.assertIn("error -32601: node 2: set_up_replica_master: no method named", err)
        self.assertEqual(await cli("shutdown"), (0, "state: EPILOGUE\n", ""))
        await waitFor(lambda: m.stops == 1, "the manager to stop")



