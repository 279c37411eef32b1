"""
C{twistd conpaassql-manager}: options and the service tree.

L{makeService} only wires services; the state directory, the token, the
registry and the driver are set up when the service starts.
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import IO, Any

from twisted.application import service
from twisted.logger import Logger, globalLogPublisher, textFileLogObserver

from conpaassql.common.config import ConfigError
from conpaassql.common.files import read_or_create_token
from conpaassql.gui.tap import ManagerClients
from conpaassql.gui.web import GUIResource, makeGUIResource
from conpaassql.iaas.base import DriverConfigError, IaaSDriver
from conpaassql.manager import drivers
from conpaassql.manager.api import ManagerAPI
from conpaassql.manager.config import ManagerConfig, load_config
from conpaassql.manager.performance import MetricsResource
from conpaassql.manager.registry import Registry
from conpaassql.manager.service import AgentClient, Manager
from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.resource import TokenAuth
from conpaassql.rpc.serve import RPCServerService, ServiceOptions, serviceOptions

log = Logger()

DEFAULT_LISTEN = "tcp:50000:interface=127.0.0.1"
DEFAULT_STATE_DIR = "~/.local/state/conpaassql/manager"
REGISTRY_FILE = "registry.sqlite"
#: The key of the web front-end's CSRF tokens, in the state directory (0600).
GUI_SECRET_FILE = "gui-secret"


def checkDriver(config: ManagerConfig, reactor: Any) -> None:
    """
    Build (and drop) the configured driver in a scratch directory, so that
    its settings are checked before the manager starts (twistd then refuses
    to start with every problem listed).

    @raise ConfigError: the driver refuses its settings.
    """
    from conpaassql.common.config import ConfigProblem

    with tempfile.TemporaryDirectory(prefix="conpaassql-check-") as scratch:
        try:
            drivers.makeDriver(config.driver, config.driverSettings, stateDir=scratch,
                               reactor=reactor, serviceTag="check")
        except DriverConfigError as e:
            raise ConfigError("[iaas]", [ConfigProblem("iaas", None, p) for p in e.problems])


def nodeFacingUrl(url: str) -> str:
    """
    The URL nodes are told to reach the manager at: the listening URL, with
    this host's name instead of a wildcard address (0.0.0.0, ::).
    """
    for wildcard in ("//0.0.0.0:", "//[::]:", "//:::"):
        if wildcard in url:
            port = url.rsplit(":", 1)[1]
            return f"http://{socket.getfqdn()}:{port}"
    return url


class Options(ServiceOptions):
    longdesc = (
        "Runs the conpaassql manager: provisions database nodes on a cloud (by default "
        "local agent processes with their own MariaDB), tracks them, and answers JSON-RPC."
    )
    optParameters = serviceOptions(DEFAULT_LISTEN, DEFAULT_STATE_DIR,
                                   "registry, token and nodes", "etc/manager.cnf")

    def loadConfig(self, path: str | None) -> ManagerConfig:
        from twisted.internet import reactor

        config = load_config(path)
        checkDriver(config, reactor)
        return config


def loopbackURL(host: str, port: int) -> str:
    """
    A URL of this host's service listening on C{host}: loopback for a
    wildcard address.
    """
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class ManagerService(RPCServerService):
    """
    The manager: its core (L{Manager}, a child service) and its HTTP API:
    JSON-RPC at C{/}, the web front-end at C{/ui/}, and whatever else is
    mounted with L{addChild}.
    """

    urlFile = "manager-url"
    what = "manager API"

    def __init__(
        self,
        stateDir: str,
        config: ManagerConfig,
        listen: str,
        tokenFile: str,
        *,
        reactor: Any = None,
        driverFactory: Any = None,
        agentClientFactory: Any = None,
        registry: Registry | None = None,
        stopProcess: Any = None,
    ) -> None:
        super().__init__(stateDir, listen, tokenFile, reactor=reactor, stopProcess=stopProcess)
        self.config = config
        self._driverFactory = driverFactory
        self._agentClientFactory = agentClientFactory
        self._registry = registry
        self.manager: Manager | None = None
        self._logFile: IO[str] | None = None
        self._logObserver: Any = None
        self.gui: GUIResource | None = None
        self._guiClients: ManagerClients | None = None

    def _makeDriver(self, serviceTag: str) -> IaaSDriver:
        return drivers.makeDriver(
            self.config.driver,
            self.config.driverSettings,
            stateDir=self.stateDir,
            reactor=self.reactor,
            serviceTag=serviceTag,
        )

    def _makeClient(self, url: str, token: str) -> AgentClient:
        return RPCClient(url, token, reactor=self.reactor,
                         timeout=self.config.agent_call_timeout, connectTimeout=5.0)

    def startService(self) -> None:
        if self.config.logfile:
            self._logFile = open(self.config.logfile, "a", encoding="utf-8")  # noqa: SIM115
            self._logObserver = textFileLogObserver(self._logFile)
            globalLogPublisher.addObserver(self._logObserver)
        token, uploads = self.prepareStateDir()
        registry = self._registry or Registry.atPath(os.path.join(self.stateDir, REGISTRY_FILE))
        self.manager = Manager(
            self.config,
            registry,
            self._driverFactory or self._makeDriver,
            self._agentClientFactory or self._makeClient,
            self.reactor,
            stopProcess=self.stopProcess,
        )
        self.manager.setServiceParent(self)
        self._mountGUI()
        super().startService()
        metrics = MetricsResource(self.manager.performance,
                                  TokenAuth([token], hint=f"token file {self.tokenFile}"))
        self.serve([ManagerAPI(self.manager)], token, uploadDir=uploads,
                   children={b"metrics": metrics})

    def _mountGUI(self) -> None:
        """
        The web front-end at C{/ui/}: it calls this manager's API over HTTP,
        at its listening URL once known, as any client does.
        """
        secret = read_or_create_token(os.path.join(self.stateDir, GUI_SECRET_FILE))
        self._guiClients = ManagerClients("http://unset/", reactor=self.reactor)
        self.gui = makeGUIResource(self._guiClients.forToken, reactor=self.reactor,
                                   secret=secret.encode("utf-8"))
        self.addChild("ui", self.gui)

    def listeningAt(self, url: str) -> None:
        assert self.manager is not None
        self.manager.setManagerUrl(self.config.manager_url or nodeFacingUrl(url))
        host = self.port.getHost()
        local = loopbackURL(host.host, host.port)
        if self._guiClients is not None and self.gui is not None:
            self._guiClients.url = self.gui.managerURL = local
        log.info("web front-end at {url}ui/", url=url)

    async def _stopServing(self) -> None:
        await super()._stopServing()
        if self._guiClients is not None:
            clients, self._guiClients = self._guiClients, None
            await clients.close()
        if self._logObserver is not None:
            globalLogPublisher.removeObserver(self._logObserver)
            self._logObserver = None
        if self._logFile is not None:
            self._logFile.close()
            self._logFile = None


def makeService(options: Options) -> service.IService:
    return ManagerService(
        options["state-dir"],
        options["parsed-config"],
        options["listen"],
        options["token-file"],
    )
