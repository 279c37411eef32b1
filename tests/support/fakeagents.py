"""
Fake agents for manager tests.

L{FakeAgents} is an in-memory stand-in for the agents a manager talks to
(its C{factory} is the manager's C{agentClientFactory}), for unit tests on
a Clock: each agent URL can be up, down (refusing), MySQL-not-running, or
hanging (never answering), and records the calls it gets.

L{FakeAgentAPI} is a small agent served over real HTTP by the project's own
JSON-RPC server side (L{listenFakeAgent}), for API tests: users and dumps
are kept in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred

from conpaassql.rpc.dispatch import Dispatcher, Params, method
from conpaassql.rpc.errors import NotFound, TransportError
from conpaassql.rpc.resource import RPCResource, TokenAuth, makeSite

__all__ = ["FakeAgentAPI", "FakeAgents", "listenFakeAgent"]


class _Client:
    def __init__(self, agents: FakeAgents, url: str, token: str) -> None:
        self.agents = agents
        self.url = url
        self.token = token
        self.closed = False

    async def call(
        self, method: str, params: Mapping[str, Any] | None = None, *,
        timeout: float | None = None,
    ) -> Any:
        self.agents.calls.append((self.url, method, dict(params or {})))
        mode = self.agents.modes.get(self.url, self.agents.default)
        if mode == "down":
            raise TransportError(f"{method}: cannot connect to {self.url}: refused")
        if mode == "hang":
            d: Deferred[Any] = Deferred()
            self.agents.hanging.append(d)
            return await d
        if self.agents.handler is not None:
            answer = self.agents.handler(self.url, method, dict(params or {}))
            if answer is not None:
                return await answer if isinstance(answer, Deferred) else answer
        if method == "get_server_state":
            if mode == "failed":
                return {"return": {"state": "STOPPED", "isRunningMySQL": False,
                                   "mysqld_port": 3400, "port": 60000,
                                   "error": "initialising the data directory failed"}}
            running = mode == "up"
            return {"return": {"state": "RUNNING" if running else "STARTING",
                               "isRunningMySQL": running, "mysqld_port": 3400,
                               "port": 60000, "error": None}}
        if method == "get_all_users":
            return {"return": [{"username": "root", "location": "localhost"}]}
        return {"return": "OK"}

    async def upload(self, method: str, params: Mapping[str, str], files: Any, *,
                     timeout: float | None = None) -> Any:
        self.agents.calls.append((self.url, method, dict(params)))
        return {"return": "OK"}

    async def close(self) -> None:
        self.closed = True


class FakeAgents:
    def __init__(self) -> None:
        #: url -> "up" | "down" | "starting" | "failed" (server did not start) | "hang"
        self.modes: dict[str, str] = {}
        self.default = "up"
        self.clients: list[_Client] = []
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.hanging: list[Deferred[Any]] = []
        #: C{(url, method, params)} -> an answer (or a Deferred of one), or
        #: None for the default; may raise an RPCError.
        self.handler: Callable[[str, str, dict[str, Any]], Any] | None = None

    def factory(self, url: str, token: str) -> _Client:
        client = _Client(self, url, token)
        self.clients.append(client)
        return client

    def set(self, port: int | None, mode: str, ip: str = "127.0.0.1") -> None:
        self.modes[f"http://{ip}:{port}/"] = mode

    def probes(self) -> int:
        return len([c for c in self.calls if c[1] == "get_server_state"])


class FakeAgentAPI:
    """Just enough of an agent, over real HTTP."""

    def __init__(self) -> None:
        self.users: dict[str, str] = {"root": "localhost"}
        self.dumps: list[tuple[str | None, bytes, dict[str, Any]]] = []
        self.running = True

    @method()
    def get_server_state(self, params: Params) -> Any:
        return {"return": {"state": "RUNNING" if self.running else "STOPPED",
                           "isRunningMySQL": self.running, "mysqld_port": 3456,
                           "port": None, "error": None}}

    @method(params=("username", "password", "host", "databases", "privileges"))
    def configure_user(self, params: Params) -> Any:
        self.users[params.str("username")] = params.str("host", "%")
        params.str("password")
        return {"return": "OK"}

    @method(params=("username", "host"))
    def delete_user(self, params: Params) -> Any:
        name = params.str("username")
        if name not in self.users:
            raise NotFound(f"no user {name!r}")
        del self.users[name]
        return {"return": "OK"}

    @method()
    def get_all_users(self, params: Params) -> Any:
        return {"return": [{"username": u, "location": h} for u, h in sorted(self.users.items())]}

    @method(params=("database",), aliases=("send_mysqldump",), upload=True)
    def create_with_MySQLdump(self, params: Params) -> Any:
        upload = params.upload("mysqldump")
        data = b"".join(upload.chunks())
        self.dumps.append((upload.filename, data, {"database": params.raw("database", None)}))
        return {"return": "OK", "bytes": len(data)}


def listenFakeAgent(reactor: Any, token: str) -> tuple[FakeAgentAPI, Any]:
    """Serve a L{FakeAgentAPI} accepting C{token} on a free port of 127.0.0.1."""
    api = FakeAgentAPI()
    resource: Any = RPCResource(Dispatcher(api), TokenAuth([token]))
    port = reactor.listenTCP(0, makeSite(resource), interface="127.0.0.1")
    return api, port
