"""
C{twistd conpaassql-agent}: options and the service tree.

L{makeService} only wires services; the state directory, the token and the
database server are set up when the service starts.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from conpaassql.agent.api import AgentAPI
from conpaassql.agent.config import AgentConfig, ConfigError, load_config
from conpaassql.agent.mysqld import ManagedServer, ScriptServer, ServerControl
from conpaassql.rpc.serve import RPCServerService

log = Logger()

DEFAULT_LISTEN = "tcp:60000:interface=127.0.0.1"
DEFAULT_STATE_DIR = "~/.local/state/conpaassql/agent"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Runs the conpaassql agent: controls this node's MySQL/MariaDB server and answers "
        "JSON-RPC on one URL.  With no --config it creates and runs its own MariaDB "
        "instance in the state directory."
    )
    optParameters = [
        ["listen", "l", DEFAULT_LISTEN, "Endpoint to serve the JSON-RPC API on."],
        ["state-dir", "d", DEFAULT_STATE_DIR, "Directory for the agent's state and server."],
        ["config", "c", None, "INI configuration file (see etc/agent.cnf)."],
        ["token-file", "t", None, "API token file (default: STATE_DIR/api-token)."],
        ["max-upload", None, str(64 * 1024**3), "Largest upload accepted, in bytes."],
    ]
    optFlags = [["check-config", None, "Validate the configuration and exit."]]

    def postOptions(self) -> None:
        self["state-dir"] = os.path.abspath(os.path.expanduser(self["state-dir"]))
        if self["token-file"] is None:
            self["token-file"] = os.path.join(self["state-dir"], "api-token")
        try:
            self["max-upload"] = int(self["max-upload"])
        except ValueError:
            raise usage.UsageError("--max-upload must be a number of bytes") from None
        try:
            self["parsed-config"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["check-config"]:
            print("configuration OK")
            raise SystemExit(0)


class AgentService(RPCServerService):
    """
    The agent: its database server (a child service) and its HTTP API.
    """

    urlFile = "agent-url"
    what = "agent API"

    def __init__(
        self,
        stateDir: str,
        config: AgentConfig,
        listen: str,
        tokenFile: str,
        *,
        maxUpload: int = 64 * 1024**3,
        reactor: Any = None,
    ) -> None:
        super().__init__(stateDir, listen, tokenFile, reactor=reactor)
        self.config = config
        self.maxUpload = maxUpload
        self.server: ServerControl | None = None
        self.api: AgentAPI | None = None

    def startService(self) -> None:
        token, uploads = self.prepareStateDir()
        if self.config.server.mode == "script":
            server: Any = ScriptServer(self.stateDir, self.config, reactor=self.reactor)
        else:
            server = ManagedServer(self.stateDir, self.config, reactor=self.reactor)
        self.server = server
        server.setServiceParent(self)
        self.api = AgentAPI(
            server,
            self.reactor,
            agentPort=lambda: self.port.getHost().port if self.port else None,
            stopAgent=self.stopProcess,
        )
        super().startService()
        self.serve([self.api], token, maxUpload=self.maxUpload, uploadDir=uploads)

    def stopService(self) -> Deferred[None]:
        if self.api is not None:
            self.api.closeDatabase()
        return super().stopService()


def makeService(options: Options) -> service.IService:
    return AgentService(
        options["state-dir"],
        options["parsed-config"],
        options["listen"],
        options["token-file"],
        maxUpload=options["max-upload"],
    )
