"""
A small in-memory stand-in for the manager's API (the method names and
result shapes of issues 3 and 5), served over real HTTP by the project's
own L{RPCResource}.  For quick tests of clients of the manager (the web
front-end, the command-line client); the manager's own tests and the front-end's browser tests use
the real thing where it exists.

Nodes go PENDING -> BOOTING -> RUNNING, one step per C{get_node_info} of
that node (so a client polling the node sees each state), unless
C{autoRun} is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred

from conpaassql.rpc.dispatch import Dispatcher, Introspection, Params, method
from conpaassql.rpc.errors import Conflict, InvalidParams, NotAvailable, NotFound, WrongState
from conpaassql.rpc.resource import RPCResource, TokenAuth, makeSite

__all__ = ["FakeManager", "FakeManagerAPI", "serveFakeManager"]

USERNAME = r"[A-Za-z0-9_.\-<>\"' &;=/]{1,80}"


class FakeManagerAPI:
    """
    The manager's API over a dict of nodes, recording what it is sent.

    @ivar replication: C{False}: the replication methods and
        C{get_service_performance} answer NotAvailable, as the manager does
        before the replication work; C{True}: they work on the dict.
    """

    NOT_AVAILABLE = (
        "replication is not available yet in this manager: it comes with the "
        "replication work (issue 5)"
    )

    def __init__(self, *, replication: bool = False, autoRun: bool = True) -> None:
        self.replication = replication
        self.autoRun = autoRun
        self.nodes: dict[int, dict[str, Any]] = {}
        self.users: dict[int, dict[str, str]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.uploads: list[tuple[Any, str | None, bytes]] = []
        self.master: int | None = None
        self.nextId = 1
        self.queries = 0.0
        #: node id -> states still to go through, one per get_node_info
        #: (instead of the automatic PENDING -> BOOTING -> RUNNING)
        self.script: dict[int, list[str]] = {}

    def addNode(self, name: str | None = None, state: str = "PENDING", **extra: Any) -> dict[str, Any]:
        nodeId = self.nextId
        self.nextId += 1
        node = {
            "id": nodeId,
            "ip": None if state == "PENDING" else f"127.0.0.{nodeId + 1}",
            "state": state,
            "role": None,
            "name": name or f"conpaassql-agent-{nodeId}",
            "isRunningMySQL": state == "RUNNING",
            "port": None,
            "mysqld_port": None,
            **extra,
        }
        self.nodes[nodeId] = node
        self.users[nodeId] = {}
        return node

    def _record(self, name: str, params: Params) -> None:
        self.calls.append((name, {n: params.raw(n) for n in params.names() if n in params}))

    def called(self, name: str) -> list[dict[str, Any]]:
        return [p for n, p in self.calls if n == name]

    def _node(self, params: Params, name: str = "serviceNodeId") -> dict[str, Any]:
        nodeId = params.int(name)
        if nodeId not in self.nodes:
            raise NotFound(f"no node {nodeId} in this service", {"serviceNodeId": nodeId})
        return self.nodes[nodeId]

    def _targets(self, params: Params) -> list[dict[str, Any]]:
        if params.raw("serviceNodeId", None) == "all":
            return [n for n in self.nodes.values() if n["state"] == "RUNNING"]
        node = self._node(params)
        if node["state"] != "RUNNING":
            raise WrongState(f"node {node['id']} is {node['state']}, not RUNNING")
        return [node]

    def _advance(self, node: dict[str, Any]) -> None:
        if not self.autoRun:
            return
        if node["state"] == "PENDING":
            node["state"] = "BOOTING"
            node["ip"] = f"127.0.0.{node['id'] + 1}"
        elif node["state"] == "BOOTING":
            node["state"] = "RUNNING"
            node["isRunningMySQL"] = True
            node["port"] = 60000 + node["id"]
            node["mysqld_port"] = 33000 + node["id"]

    @method()
    def list_nodes(self, params: Params) -> Any:
        return {"serviceNode": sorted(self.nodes)}

    @method(params=("serviceNodeId",))
    def get_node_info(self, params: Params) -> Any:
        node = self._node(params)
        script = self.script.get(node["id"])
        if script:
            node["state"] = script.pop(0)
        else:
            self._advance(node)
        return {"serviceNode": dict(node)}

    @method()
    def get_service_info(self, params: Params) -> Any:
        counts: dict[str, int] = {}
        for node in self.nodes.values():
            counts[node["state"]] = counts.get(node["state"], 0) + 1
        return {"state": "RUNNING", "type": "conpaassql", "nodes": counts, "master": self.master}

    @method(params=("function", "count"))
    def add_nodes(self, params: Params) -> Any:
        self._record("add_nodes", params)
        if params.str("function", "agent") != "agent":
            raise InvalidParams("function must be 'agent'", "function")
        added = [self.addNode() for _ in range(params.int("count", 1, min=1, max=20))]
        return {"serviceNode": added[0] if len(added) == 1 else added}

    @method(params=("serviceNodeId",), aliases=("delete_nodes",))
    def remove_nodes(self, params: Params) -> Any:
        self._record("remove_nodes", params)
        node = self._node(params)
        if node["id"] == self.master and any(
            n.get("role") == "SLAVE" for n in self.nodes.values()
        ):
            raise Conflict(f"node {node['id']} is the master of slaves; remove them first")
        del self.nodes[node["id"]]
        if self.master == node["id"]:
            self.master = None
        return {"result": "OK"}

    @method(params=("serviceNodeId", "username", "password"))
    def configure_user(self, params: Params) -> Any:
        self._record("configure_user", params)
        username = params.str("username", pattern=USERNAME, what="a user name")
        password = params.str("password")
        for node in self._targets(params):
            self.users[node["id"]][username] = password
        return {"return": "OK"}

    @method(params=("serviceNodeId", "username", "host"))
    def delete_user(self, params: Params) -> Any:
        self._record("delete_user", params)
        username = params.str("username")
        for node in self._targets(params):
            if username not in self.users[node["id"]]:
                raise NotFound(f"no user {username!r} on node {node['id']}")
            del self.users[node["id"]][username]
        return {"return": "OK"}

    @method(params=("serviceNodeId",))
    def get_users(self, params: Params) -> Any:
        self._record("get_users", params)
        if "serviceNodeId" in params and params.raw("serviceNodeId") != "all":
            ids = [self._node(params)["id"]]
        else:
            ids = sorted(self.nodes)
        return {
            str(i): [{"username": "root", "location": "localhost", "managed": True}]
            + [{"username": u, "location": "%", "managed": False} for u in sorted(self.users[i])]
            for i in ids
        }

    @method(params=("serviceNodeId",), upload=True)
    def send_mysqldump(self, params: Params) -> Any:
        upload = params.upload("mysqldump")
        targets = self._targets(params)
        data = b"".join(upload.chunks())
        self.uploads.append((params.raw("serviceNodeId"), upload.filename, data))
        return {"return": "OK", "nodes": [n["id"] for n in targets], "bytes": len(data)}

    @method(params=("id",))
    def set_up_replica_master(self, params: Params) -> Any:
        self._record("set_up_replica_master", params)
        if not self.replication:
            raise NotAvailable(self.NOT_AVAILABLE)
        node = self._node(params, "id")
        for other in self.nodes.values():
            if other.get("role") == "MASTER":
                other["role"] = "SLAVE"
        node["role"] = "MASTER"
        node["replication"] = {"binlog_file": "mysql-bin.000001", "binlog_pos": 342,
                               "gtid_binlog_pos": "0-1-3"}
        self.master = node["id"]
        return {"return": "OK"}

    @method(params=("id",))
    def set_up_replica_slave(self, params: Params) -> Any:
        self._record("set_up_replica_slave", params)
        if not self.replication:
            raise NotAvailable(self.NOT_AVAILABLE)
        node = self._node(params, "id")
        if self.master is None:
            raise WrongState("there is no master yet: make a node the master first")
        node["role"] = "SLAVE"
        node["replication"] = {"slave_io_running": "Yes", "slave_sql_running": "Yes",
                               "seconds_behind_master": 0, "last_error": ""}
        return {"return": "OK"}

    @method()
    def get_service_performance(self, params: Params) -> Any:
        if not self.replication:
            raise NotAvailable("service performance figures are not available yet")
        self.queries += 1
        return {
            "service": {"queries_per_second": 10 + (self.queries % 7), "connections": 3,
                        "max_replication_lag": self.queries % 3},
            "nodes": {},
        }

    @method()
    def shutdown(self, params: Params) -> Any:
        return {"state": "EPILOGUE"}


@dataclass
class FakeManager:
    api: FakeManagerAPI
    port: Any
    url: str
    token: str

    def stop(self) -> Deferred[None]:
        return self.port.stopListening()


def serveFakeManager(token: str, *, reactor: Any = None, **apiOptions: Any) -> FakeManager:
    """Serve a L{FakeManagerAPI} on a free port of 127.0.0.1."""
    reactor = reactor or _globalReactor
    api = FakeManagerAPI(**apiOptions)
    dispatcher = Dispatcher(api)
    dispatcher.collect(Introspection(dispatcher))
    site = makeSite(RPCResource(dispatcher, TokenAuth([token], hint="in the test")))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return FakeManager(api, port, f"http://127.0.0.1:{port.getHost().port}/", token)

