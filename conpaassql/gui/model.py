"""
What the front-end asks of the manager, and the shapes it turns the answers
into.  Pure functions (unit-tested) beside the few calls that gather several
API answers into one view.

The manager's results are read tolerantly: a key the manager does not send
shows as "unknown" rather than breaking a page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults

from conpaassql.rpc.errors import RPCError, TransportError

__all__ = [
    "ManagerClient",
    "errorText",
    "nodeRow",
    "nodeRows",
    "performanceFigures",
    "replicationLag",
    "usersOfNode",
]

#: How many get_node_info calls one nodes view makes at once.
NODE_INFO_CONCURRENCY = 8


class ManagerClient(Protocol):
    """What the front-end needs of L{conpaassql.rpc.client.RPCClient}."""

    url: str

    async def call(
        self, method: str, params: Mapping[str, Any] | list[Any] | None = None,
        *, timeout: float | None = None,
    ) -> Any: ...

    async def upload(
        self, method: str, params: Mapping[str, str], files: Mapping[str, Any],
        *, progress: Any = None, timeout: float | None = None,
    ) -> Any: ...


_CODE_HINTS: dict[int, str] = {
    -32001: "The manager refused the API token; sign in again with the current token.",
    -32602: "The manager refused a value",
    -32601: "This manager does not offer that operation",
    1001: "Not possible in the current state",
    1002: "Not found",
    1003: "The database server refused it",
    1004: "Conflict",
    1005: "Not available in this deployment",
    1006: "The operation failed",
    1007: "The cloud reported an error",
    1008: "Timed out",
}


def errorText(error: BaseException, managerURL: str = "") -> str:
    """
    A sentence a person can act on, from an error raised by a manager call.
    """
    if isinstance(error, TransportError):
        where = f" at {managerURL}" if managerURL else ""
        return (
            f"Cannot reach the manager{where}: {error}. Check that it is running and "
            "that the front-end's manager URL is right, then try again."
        )
    if isinstance(error, RPCError):
        hint = _CODE_HINTS.get(error.code)
        if error.code == -32001:
            return hint or error.message
        if hint:
            return f"{hint}: {error.message}"
        return f"The manager answered with error {error.code}: {error.message}"
    return f"Unexpected error: {error}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _first(mapping: Mapping[str, Any], keys: Sequence[str]) -> float | None:
    lowered = {str(k).lower(): v for k, v in mapping.items()}
    for key in keys:
        value = _number(lowered.get(key.lower()))
        if value is not None:
            return value
    return None


_LAG_KEYS = (
    "seconds_behind_master",
    "seconds_behind_source",
    "seconds_behind",
    "replication_lag",
    "lag",
)


def replicationLag(node: Mapping[str, Any]) -> float | None:
    """A node's replication lag in seconds, if its info tells it."""
    replication = node.get("replication")
    if isinstance(replication, Mapping):
        lag = _first(replication, _LAG_KEYS)
        if lag is not None:
            return lag
    return _first(node, _LAG_KEYS)


def nodeRow(nodeId: Any, info: Mapping[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    """One row of the nodes table, from a C{get_node_info} C{serviceNode}."""
    info = info or {}
    running = info.get("isRunningMySQL")
    return {
        "id": info.get("id", nodeId),
        "name": info.get("name"),
        "ip": info.get("ip"),
        "state": info.get("state"),
        "role": info.get("role"),
        "mysql": running if isinstance(running, bool) else None,
        "lag": replicationLag(info),
        "error": error if error is not None else info.get("error"),
    }


async def nodeRows(client: ManagerClient) -> list[dict[str, Any]]:
    """
    Every node of the service as table rows: C{list_nodes}, then
    C{get_node_info} for each (at most L{NODE_INFO_CONCURRENCY} at once).
    A node whose info cannot be had gets a row carrying the error.

    @raise RPCError, TransportError: if C{list_nodes} fails.
    """
    listed = await client.call("list_nodes")
    ids = listed.get("serviceNode", []) if isinstance(listed, Mapping) else listed
    if not isinstance(ids, list):
        ids = [ids]
    semaphore = DeferredSemaphore(NODE_INFO_CONCURRENCY)

    async def one(nodeId: Any) -> dict[str, Any]:
        try:
            reply = await client.call("get_node_info", {"serviceNodeId": nodeId})
        except (RPCError, TransportError) as e:
            return nodeRow(nodeId, None, errorText(e, client.url))
        info = reply.get("serviceNode") if isinstance(reply, Mapping) else None
        return nodeRow(nodeId, info if isinstance(info, Mapping) else None)

    def limited(nodeId: Any) -> Deferred[dict[str, Any]]:
        return semaphore.run(lambda: Deferred.fromCoroutine(one(nodeId)))

    rows: list[dict[str, Any]] = await gatherResults([limited(i) for i in ids])
    return rows


def performanceFigures(perf: Any) -> dict[str, float | None]:
    """
    The service's queries per second, connections and replication lag from a
    C{get_service_performance} result (service-wide figures, or the largest
    per-node lag when only nodes carry it).
    """
    if not isinstance(perf, Mapping):
        return {"qps": None, "connections": None, "lag": None}
    service = perf.get("service")
    top: Mapping[str, Any] = service if isinstance(service, Mapping) else perf
    qps = _first(top, ("queries_per_second", "qps", "request_rate"))
    connections = _first(top, ("connections", "threads_connected"))
    lag = _first(top, ("max_replication_lag", *_LAG_KEYS))
    if lag is None:
        nodes = perf.get("nodes")
        values = nodes.values() if isinstance(nodes, Mapping) else nodes
        if isinstance(values, (list, type({}.values()))):
            lags = [
                replicationLag(n) for n in values if isinstance(n, Mapping)
            ]
            known = [x for x in lags if x is not None]
            lag = max(known) if known else None
    return {"qps": qps, "connections": connections, "lag": lag}


def usersOfNode(result: Any, nodeId: Any) -> list[dict[str, Any]]:
    """
    The users of one node from a C{get_users} result, which may be a list of
    users, C{{"users": [...]}}, or a mapping from node id to users.  Users
    the service manages itself (root, replication) come with C{managed}.
    """
    if isinstance(result, Mapping):
        if "users" in result:
            result = result["users"]
        elif str(nodeId) in result:
            result = result[str(nodeId)]
        elif nodeId in result:
            result = result[nodeId]
        elif len(result) == 1:
            result = next(iter(result.values()))
        else:
            result = []
    if not isinstance(result, list):
        return []
    users = []
    for user in result:
        if isinstance(user, Mapping):
            users.append(
                {
                    "username": str(user.get("username", user.get("user", ""))),
                    "location": str(user.get("location", user.get("host", "%"))),
                    "managed": user.get("managed") is True,
                }
            )
        elif isinstance(user, str):
            users.append({"username": user, "location": "%", "managed": False})
    return users
