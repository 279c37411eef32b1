"""
The serving side shared by the agent and the manager: a service that keeps
its state in a private directory, authenticates with a token kept in a 0600
file, answers JSON-RPC on a Twisted endpoint, and writes the URL it listens
on to a file in its state directory once it listens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.resource import IResource

from conpaassql.common.files import read_or_create_token, write_file_atomic
from conpaassql.rpc.dispatch import Dispatcher, Introspection
from conpaassql.rpc.resource import (
    ConnectionTracker,
    RPCResource,
    RPCRoot,
    TokenAuth,
    makeSite,
)

__all__ = ["RPCServerService", "ServiceOptions", "serviceOptions"]

log = Logger()


def serviceOptions(listen: str, stateDir: str, what: str, sample: str) -> list[list[Any]]:
    """The options every service has: where it listens and keeps its state."""
    return [
        ["listen", "l", listen, "Endpoint to serve the JSON-RPC API on."],
        ["state-dir", "d", stateDir, f"Directory for the {what}."],
        ["config", "c", None, f"INI configuration file (see {sample})."],
        ["token-file", "t", None, "API token file (default: STATE_DIR/api-token)."],
    ]


class ServiceOptions(usage.Options):
    """
    Options of a service (L{serviceOptions}, C{--check-config}): the state
    directory made absolute, the token file defaulted into it, and the
    configuration read by L{loadConfig} into C{self["parsed-config"]}, its
    problems reported as a usage error.
    """

    synopsis = "[options]"
    optFlags = [["check-config", None, "Validate the configuration and exit."]]

    def loadConfig(self, path: str | None) -> Any:
        """Read and check the configuration; raise C{ConfigError} with every problem."""
        raise NotImplementedError

    def postOptions(self) -> None:
        from conpaassql.common.config import ConfigError

        self["state-dir"] = os.path.abspath(os.path.expanduser(self["state-dir"]))
        if self["token-file"] is None:
            self["token-file"] = os.path.join(self["state-dir"], "api-token")
        try:
            self["parsed-config"] = self.loadConfig(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["check-config"]:
            print("configuration OK")
            raise SystemExit(0)


class RPCServerService(service.MultiService):
    """
    @ivar listening: fires with the listening port (or fails) once the API
        is served.
    @ivar port: the listening port, while listening.
    """

    #: The file of the state directory the URL is written to.
    urlFile = "url"
    #: What the log calls this service's API.
    what = "API"

    def __init__(self, stateDir: str, listen: str, tokenFile: str, *, reactor: Any = None,
                 stopProcess: Callable[[], None] | None = None) -> None:
        """
        @param stopProcess: what L{stopProcess} does instead of stopping the
            reactor (tests running the service in-process pass one).
        """
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.stateDir = stateDir
        self.listen = listen
        self.tokenFile = tokenFile
        self.port: Any = None
        self.listening: Deferred[Any] = Deferred()
        #: The site's root once served; other resources beside the API.
        self.root: RPCRoot | None = None
        self._children: dict[bytes, IResource] = {}
        self._stopProcessHook = stopProcess
        self._connections: ConnectionTracker | None = None

    def addChild(self, name: str, child: IResource) -> None:
        """
        Serve C{child} at C{/<name>/} beside the JSON-RPC API at C{/} (e.g.
        C{ui}, C{metrics}); before or after the service starts.
        """
        if not name or "/" in name:
            raise ValueError(f"a child's name is one path segment, not {name!r}")
        key = name.encode("utf-8")
        self._children[key] = child
        if self.root is not None:
            self.root.putChild(key, child)

    def prepareStateDir(self) -> tuple[str, str]:
        """
        Make the state directory and its upload spool (0700), and read or
        make the API token.

        @return: the token, and the upload directory.
        """
        os.makedirs(self.stateDir, mode=0o700, exist_ok=True)
        os.chmod(self.stateDir, 0o700)
        uploads = os.path.join(self.stateDir, "uploads")
        os.makedirs(uploads, mode=0o700, exist_ok=True)
        token = read_or_create_token(self.tokenFile)
        log.info("API token is in {path} (mode 0600)", path=self.tokenFile)
        return token, uploads

    def serve(
        self,
        providers: list[object],
        token: str,
        *,
        children: Mapping[bytes, IResource] | None = None,
        **siteOptions: Any,
    ) -> None:
        """
        Answer the methods of C{providers} (and list_methods) on the
        endpoint, at C{/}; C{children} are other resources of the site, by
        their first path segment (they do their own authentication).
        """
        dispatcher = Dispatcher(*providers)
        dispatcher.collect(Introspection(dispatcher))
        rpc: IResource = RPCResource(
            dispatcher, TokenAuth([token], hint=f"token file {self.tokenFile}")
        )
        # Always a root with children: more can be added (addChild) later.
        self.root = RPCRoot(rpc, {**self._children, **dict(children or {})})
        site = makeSite(self.root, **siteOptions)
        self._connections = ConnectionTracker(site)
        d = endpoints.serverFromString(self.reactor, self.listen).listen(self._connections)
        d.addCallbacks(self._listening, self._listenFailed)

    def listeningAt(self, url: str) -> None:
        """Called once the API listens at C{url}."""

    def _listening(self, port: Any) -> None:
        self.port = port
        host = port.getHost()
        url = f"http://{host.host}:{host.port}/"
        # Atomic: whoever waits for this file (the LOCAL cloud driver, tools)
        # reads the whole URL or nothing.
        write_file_atomic(os.path.join(self.stateDir, self.urlFile), url + "\n")
        log.info("{what} listening at {url}", what=self.what, url=url)
        self.listeningAt(url)
        self.listening.callback(port)

    def _listenFailed(self, failure: Any) -> None:
        log.failure("cannot listen on {listen}", failure, listen=self.listen)
        self.listening.errback(failure)
        self.stopProcess()

    def stopProcess(self) -> None:
        """End the process (after a shutdown call, or when it cannot listen)."""
        if self._stopProcessHook is not None:
            self._stopProcessHook()
        elif self.reactor.running:
            self.reactor.stop()
        else:
            # A listen failure is reported while twistd starts the services,
            # before the reactor runs: stop it as soon as it does, instead of
            # running on without an API.
            self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, close the connections already accepted (idle
        keep-alive ones would otherwise stay open, with their timeouts
        pending), then stop the children (which wait for their work).
        """
        return Deferred.fromCoroutine(self._stopServing())

    async def _stopServing(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
        if self._connections is not None:
            connections, self._connections = self._connections, None
            await connections.closeConnections(self.reactor)
        await super().stopService()
