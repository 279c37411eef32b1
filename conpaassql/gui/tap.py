"""
C{twistd conpaassql-manager-gui}: the web front-end on its own site, talking
to a manager at a configured URL.

L{makeService} only wires services; the state directory and the session
secret are set up when the service starts.
"""

from __future__ import annotations

import os
from typing import Any

from treq.client import HTTPClient
from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python import usage
from twisted.web import resource
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.util import Redirect

from conpaassql.common.files import read_or_create_token
from conpaassql.gui.config import ConfigError, GUIConfig, load_config
from conpaassql.gui.web import makeGUIResource
from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.resource import makeSite

__all__ = ["GUIService", "ManagerClients", "Options", "makeService"]

log = Logger()

DEFAULT_LISTEN = "tcp:5000:interface=127.0.0.1"
DEFAULT_MANAGER_URL = "http://127.0.0.1:50000/"
DEFAULT_STATE_DIR = "~/.local/state/conpaassql/manager-gui"
#: The file in the state directory holding the key of the CSRF tokens.
SECRET_FILE = "session-secret"


class ManagerClients:
    """
    Clients of one manager's API, one per API token, sharing one HTTP
    connection pool.  Pass L{forToken} to L{makeGUIResource}; L{close} on
    stop.
    """

    def __init__(self, url: str, *, reactor: Any, timeout: float = 30.0) -> None:
        self.url = url
        self._reactor = reactor
        self._timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 8
        self._pool.retryAutomatically = False
        self._http = HTTPClient(Agent(reactor, pool=self._pool, connectTimeout=10.0))

    def forToken(self, token: str) -> RPCClient:
        return RPCClient(self.url, token, reactor=self._reactor, httpClient=self._http,
                         timeout=self._timeout)

    def close(self) -> Deferred[None]:
        return self._pool.closeCachedConnections()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Runs the conpaassql web front-end: a site for operators who sign in with the "
        "manager's API token.  It talks to the manager only through its JSON-RPC API."
    )
    optParameters = [
        ["listen", "l", None, f"Endpoint to serve the front-end on (default {DEFAULT_LISTEN})."],
        ["manager-url", "m", None,
         f"The manager's API URL (default {DEFAULT_MANAGER_URL}, or MANAGER_HOST/MANAGER_PORT "
         "of --config)."],
        ["config", "c", None, "Configuration file (the original's manager-gui.conf keys)."],
        ["state-dir", "d", DEFAULT_STATE_DIR,
         "Directory for the front-end's session secret and upload spool."],
    ]
    optFlags = [["check-config", None, "Validate the configuration and exit."]]

    def postOptions(self) -> None:
        self["state-dir"] = os.path.abspath(os.path.expanduser(self["state-dir"]))
        try:
            config = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self["parsed-config"] = config
        self["manager-url"] = self["manager-url"] or config.managerURL or DEFAULT_MANAGER_URL
        self["listen"] = self["listen"] or config.listen or DEFAULT_LISTEN
        if self["check-config"]:
            print("configuration OK")
            raise SystemExit(0)


class GUIService(service.Service):
    """The front-end's site, listening; its manager clients, closed on stop."""

    def __init__(self, stateDir: str, managerURL: str, listen: str,
                 config: GUIConfig | None = None, *, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.stateDir = stateDir
        self.managerURL = managerURL
        self.listen = listen
        self.config = config or GUIConfig()
        self.port: Any = None
        self.clients: ManagerClients | None = None
        self.listening: Deferred[Any] = Deferred()

    def startService(self) -> None:
        super().startService()
        os.makedirs(self.stateDir, mode=0o700, exist_ok=True)
        uploads = os.path.join(self.stateDir, "uploads")
        os.makedirs(uploads, mode=0o700, exist_ok=True)
        secret = read_or_create_token(os.path.join(self.stateDir, SECRET_FILE))
        self.clients = ManagerClients(self.managerURL, reactor=self.reactor)
        gui = makeGUIResource(
            self.clients.forToken,
            reactor=self.reactor,
            secret=secret.encode("utf-8"),
            managerURL=self.managerURL,
            secureCookies=self.config.secureCookies,
            allowedOrigins=self.config.allowedOrigins,
        )
        root = resource.Resource()
        root.putChild(b"", Redirect(b"/ui/"))
        root.putChild(b"ui", gui)
        site = makeSite(root, uploadDir=uploads)  # uploads stay on disk
        d = endpoints.serverFromString(self.reactor, self.listen).listen(site)
        d.addCallbacks(self._listening, self._listenFailed)

    def _listening(self, port: Any) -> None:
        self.port = port
        host = port.getHost()
        log.info("web front-end at http://{host}:{port}/ui/ for the manager at {manager}",
                 host=host.host, port=host.port, manager=self.managerURL)
        self.listening.callback(port)

    def _listenFailed(self, failure: Any) -> None:
        log.failure("cannot listen on {listen}", failure, listen=self.listen)
        self.listening.errback(failure)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        d: Deferred[Any] = (
            succeed(None) if self.port is None else maybeDeferred(self.port.stopListening)
        )
        self.port = None
        clients, self.clients = self.clients, None
        if clients is not None:
            d.addCallback(lambda _: clients.close())
        return d


def makeService(options: Options) -> service.IService:
    return GUIService(options["state-dir"], options["manager-url"], options["listen"],
                      options["parsed-config"])
