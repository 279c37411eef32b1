"""
The manager's JSON-RPC methods, with the original ConPaaS names and shapes.

Handlers validate their input, act through L{Manager} and never wait for
provisioning.  Errors are L{conpaassql.rpc.errors.RPCError}s, mapped to the
wire by the dispatcher.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.web.client import FileBodyProducer

from conpaassql.manager.service import AgentClient, Manager
from conpaassql.rpc.dispatch import Params, method
from conpaassql.rpc.errors import Conflict, InvalidParams

__all__ = ["ManagerAPI"]

#: Node functions add_nodes knows.
FUNCTIONS = ("agent",)
#: The most nodes one add_nodes call may ask for.
MAX_COUNT = 50

_DATABASE = r"[A-Za-z0-9_$]{1,64}"


def _target(params: Params, default: Any = None) -> int | str:
    """C{serviceNodeId}: a node id, or C{"all"}."""
    if default is not None and "serviceNodeId" not in params:
        return str(default)
    if params.raw("serviceNodeId") == "all":
        return "all"
    try:
        return int(params.int("serviceNodeId", min=1))
    except InvalidParams:
        raise InvalidParams(
            "parameter 'serviceNodeId' must be a node id (a positive integer) or \"all\"",
            "serviceNodeId",
        ) from None


class ManagerAPI:
    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    # Nodes.

    @method(params=("function", "count"))
    async def add_nodes(self, params: Params) -> dict[str, Any]:
        """
        Add nodes (C{function} "agent", C{count} default 1); returns at once
        with them PENDING.
        """
        function = params.str("function", "agent", maxLength=32)
        if function not in FUNCTIONS:
            raise InvalidParams(
                f"parameter 'function' must be one of: {', '.join(FUNCTIONS)} "
                f"(not {function[:32]!r})", "function",
            )
        count = params.int("count", 1, min=1, max=MAX_COUNT)
        records = await self.manager.addNodes(function, count)
        shown = [{"id": r.id, "ip": r.ip, "state": r.state, "name": r.name} for r in records]
        return {"serviceNode": shown[0] if len(shown) == 1 else shown}

    @method(params=("serviceNodeId",), aliases=("delete_nodes",))
    async def remove_nodes(self, params: Params) -> dict[str, Any]:
        """Remove a node: its VM and data are ended (in the background)."""
        nodeId = int(params.int("serviceNodeId", min=1))
        await self.manager.removeNode(nodeId)
        return {"result": "OK"}

    @method()
    async def list_nodes(self, params: Params) -> dict[str, Any]:
        """
        The ids of the service's nodes: not those being removed (TERMINATING:
        remove_nodes said OK; get_node_info still shows them until they are
        gone, get_service_info counts them).
        """
        await self.manager.ready
        return {"serviceNode": sorted(i for i, n in self.manager.nodes.items()
                                      if n.state != "TERMINATING")}

    @method(params=("serviceNodeId",))
    async def get_node_info(self, params: Params) -> dict[str, Any]:
        """One node: address, ports, state, role, whether MySQL runs, error."""
        nodeId = int(params.int("serviceNodeId", min=1))
        await self.manager.ready
        return {"serviceNode": self.manager.nodeInfo(self.manager.node(nodeId))}

    @method()
    async def get_service_info(self, params: Params) -> dict[str, Any]:
        """The service's state, its nodes by state, and the master."""
        return self.manager.serviceInfo()

    @method()
    async def shutdown(self, params: Params) -> dict[str, Any]:
        """Terminate every node; the manager then stops (STOPPED)."""
        await self.manager.shutdown()
        return {"state": "EPILOGUE"}

    # Users and data, on one node or "all".

    async def _forward(
        self,
        target: int | str,
        agentMethod: str,
        forward: dict[str, Any],
        show: Callable[[Any], Any] = lambda result: "OK",
        *,
        write: bool = True,
    ) -> dict[str, Any]:
        """
        Call C{agentMethod} on the target nodes' agents (for a write, on
        the master once there is one: L{Manager.writeTargets}).

        @return: C{{node id: show(agent's result)}}, with the skipped nodes
            (and the slaves, reached by replication).
        """
        if write:
            nodes, skipped = await self.manager.writeTargets(target)
        else:
            nodes, skipped = await self.manager.targets(target)

        async def call(client: AgentClient) -> Any:
            return show(await client.call(agentMethod, forward,
                                          timeout=self.manager.config.agent_call_timeout))

        done = await self.manager.onAgents(nodes, call, agentMethod)
        return {**done, **skipped}

    @method(params=("serviceNodeId", "username", "password", "host", "databases",
                    "privileges"))
    async def configure_user(self, params: Params) -> dict[str, Any]:
        """
        Create a database user (or set its password) on a node or on "all";
        optional C{host}, C{databases}, C{privileges} as the agent takes them.
        """
        target = _target(params)
        forward: dict[str, Any] = {
            "username": params.str("username", maxLength=80),
            "password": params.str("password", maxLength=256),
        }
        if "host" in params:
            forward["host"] = params.str("host", maxLength=255)
        for name in ("databases", "privileges"):
            if name in params:
                forward[name] = params.strList(name)
        return await self._forward(target, "configure_user", forward)

    @method(params=("serviceNodeId", "username", "host"))
    async def delete_user(self, params: Params) -> dict[str, Any]:
        """Drop a database user on a node or on "all"."""
        target = _target(params)
        forward: dict[str, Any] = {"username": params.str("username", maxLength=80)}
        if "host" in params:
            forward["host"] = params.str("host", maxLength=255)
        return await self._forward(target, "delete_user", forward)

    @method(params=("serviceNodeId",))
    async def get_users(self, params: Params) -> dict[str, Any]:
        """The database users of a node or of every node (the default), by node id."""
        target = _target(params, default="all")
        return await self._forward(
            target, "get_all_users", {},
            lambda result: result.get("return") if isinstance(result, dict) else result,
            write=False,
        )

    @method(params=("serviceNodeId", "database"), upload=True)
    async def send_mysqldump(self, params: Params) -> Any:
        """
        Load an SQL dump (multipart file field C{mysqldump}) on a node or on
        "all"; the file is streamed on to each agent.
        """
        upload = params.upload("mysqldump")
        target = _target(params)
        forward: dict[str, str] = {}
        if "database" in params:
            forward["database"] = params.str("database", pattern=_DATABASE,
                                             what="a database name")
        nodes, skipped = await self.manager.writeTargets(target)
        name = os.path.basename(upload.filename or "dump.sql")

        async def call(client: AgentClient) -> Any:
            producer = FileBodyProducer(upload.reader(), readSize=256 * 1024)
            return await client.upload(
                "create_with_MySQLdump", forward, {"mysqldump": (name, producer)},
                timeout=self.manager.config.upload_timeout,
            )

        done = await self.manager.onAgents(nodes, call, "send_mysqldump")
        if target != "all":
            # Aimed at a slave, it went to the master.
            return done[str(nodes[0].id)]
        return {**done, **skipped}

    # Replication.

    @method(params=("id",), extraParams=True)
    async def set_up_replica_master(self, params: Params) -> Any:
        """
        Make node C{id} the replication master; on the master, nothing
        changes; on a slave while a master exists, a controlled switchover.
        """
        nodeId = int(params.int("id", min=1))
        if self.manager.failover.lost or self.manager.failover.busy:
            # The master is lost: the failover to this slave (failover.py).
            return await self.manager.failover.recover(nodeId)
        return await self.manager.replication.setUpMaster(nodeId)

    @method(params=("id",), extraParams=True)
    async def set_up_replica_slave(self, params: Params) -> Any:
        """
        Make node C{id} a slave of the master, seeded from it; answers at
        once (C{"state": "SEEDING"}); get_node_info shows the progress.
        """
        nodeId = int(params.int("id", min=1))
        if self.manager.failover.busy:
            raise Conflict("a failover is in progress; get_service_info shows it")
        return await self.manager.replication.attachSlave(nodeId)

    @method()
    async def get_service_performance(self, params: Params) -> Any:
        """
        The service's performance over the last minute: queries, reads and
        writes per second, connections, slow queries, bytes, replication
        lag, per node and for the service, and the original's four keys.
        """
        await self.manager.ready
        return self.manager.performance.report()
