"""
A real manager in-process on the real LOCAL driver (its nodes real agents,
each with its own mariadbd), on a free port, for integration tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.trial.unittest import TestCase

from conpaassql.manager.config import ManagerConfig
from conpaassql.manager.tap import ManagerService
from conpaassql.rpc.client import RPCClient
from tests.test_iaas_local import LocalCloud, localCloud
from tests.support.managerproc import WAIT, nodesIn, until

reactor: Any = _reactor


@dataclass
class LocalManager:
    cloud: LocalCloud
    service: ManagerService
    url: str
    token: str
    client: RPCClient
    #: How many times the service asked to end the process.
    stops: list[int]

    async def running(self, *ids: int) -> None:
        await until(lambda: nodesIn(self.client, "RUNNING", list(ids)),
                    f"nodes {ids} RUNNING")


async def startLocalManager(testcase: TestCase, nodes: int = 0) -> LocalManager:
    """
    Start the manager in a fresh state directory (cleaned up, every node
    ended, by L{localCloud}), and add C{nodes} nodes and wait until they run.
    """
    cloud = localCloud(testcase)
    stops: list[int] = []
    service = ManagerService(
        cloud.stateDir, ManagerConfig(poll_interval=0.25, boot_timeout=WAIT),
        "tcp:0:interface=127.0.0.1", os.path.join(cloud.stateDir, "api-token"),
        reactor=reactor, stopProcess=lambda: stops.append(1),
    )
    service.startService()
    testcase.addCleanup(lambda: service.stopService() if service.running else None)
    port = await service.listening
    url = f"http://127.0.0.1:{port.getHost().port}/"
    with open(os.path.join(cloud.stateDir, "api-token")) as f:
        token = f.read().strip()
    client = RPCClient(url, token, reactor=reactor, timeout=120)
    testcase.addCleanup(client.close)
    manager = LocalManager(cloud, service, url, token, client, stops)
    if nodes:
        await client.call("add_nodes", {"function": "agent", "count": nodes})
        await manager.running(*range(1, nodes + 1))
    return manager
