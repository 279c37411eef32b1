"""
Replication, the manager's side: which node is the master, making slaves,
switching the master over, and where writes go.

It drives the agents' replication methods (README, "Replication (agent
side)") over the wire, and keeps everything it must remember in the
registry: each node's role (C{MASTER}, C{SLAVE} or none, in the node's
record), the replication account's password (generated once, never logged),
each node's last set-up (kind, phase, bytes, error) and a switchover under
way.

  - L{ReplicationCoordinator.setUpMaster}: the first master is set up at
    once (the agent's C{set_up_replica_master} is short: at most a server
    restart); calling it on the master changes nothing; calling it on a
    slave while a master exists is a switchover (L{promote}).
  - L{ReplicationCoordinator.attachSlave}: asks the node's agent to seed
    itself from the master's agent and returns at once; a watcher then
    polls the agent until it replicates (role SLAVE) or fails (the error
    stays in the node's info; the node stays RUNNING).  A manager that
    dies during a seed resumes watching it when it starts again (the seed
    runs on the agents, not in the manager); if the agent no longer knows
    of it, the set-up is reported failed.
  - L{ReplicationCoordinator.promote}: the controlled switchover.  The old
    master goes read-only, its GTID position is read, every slave waits
    until it has applied it (at most C{switchover_timeout}; otherwise the
    old master is made writable again and nothing changed), the new master
    is promoted and the roles swap in the registry; then the old master and
    the other slaves are pointed at the new master from that GTID position,
    in the background (each one's progress in its info).  Writes through
    the manager are refused while it runs.  A switchover cut short by a
    manager crash is reported by get_service_info (C{replication_error});
    calling set_up_replica_master again finishes it.

While an operation runs the service is ADAPTING.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.logger import Logger

from conpaassql.manager.errors import describe
from conpaassql.rpc.errors import Conflict, OperationFailed, RPCError, WrongState

if TYPE_CHECKING:
    from conpaassql.manager.node import Node
    from conpaassql.manager.service import AgentClient, Manager

__all__ = ["MASTER", "REPL_USER", "SLAVE", "ReplicationCoordinator"]

log = Logger()

MASTER = "MASTER"
SLAVE = "SLAVE"
#: The replication account the agents create on the master.
REPL_USER = "conpaassql_repl"

_PASSWORD = "replication.password"
_SETUP = "replication.setup."
_SWITCHOVER = "replication.switchover"

#: Set-up phases after which nothing runs any more.
_ENDED = ("replicating", "failed")

#: What get_node_info shows of the agent's replication object.
_SHOWN = (
    "role", "phase", "io_running", "sql_running", "seconds_behind", "last_error",
    "last_io_error", "last_sql_error", "master_host", "master_port", "gtid_current_pos",
    "gtid_binlog_pos", "bytes", "error",
)


class ReplicationCoordinator:
    """
    @param manager: the manager whose nodes, registry and agent clients it uses.
    @param watchInterval: seconds between polls of a seeding agent.
    """

    def __init__(self, manager: Manager, *, watchInterval: float = 0.5) -> None:
        self.manager = manager
        self.clock = manager.clock
        self.watchInterval = watchInterval
        #: Each node's current or last set-up: kind, phase, bytes, error, times.
        self.setups: dict[int, dict[str, Any]] = {}
        #: The switchover under way (from, to, step), or None.
        self.switchover: dict[str, Any] | None = None
        #: Why the last switchover did not finish (a manager crash), or None.
        self.error: str | None = None
        self._interrupted: dict[str, Any] | None = None
        self._password: str | None = None
        self._watchers: dict[int, Deferred[None]] = {}
        self._masterBusy = False

    # State.

    @property
    def busy(self) -> bool:
        """Whether an operation runs (the service is then ADAPTING)."""
        return self._masterBusy or self.switchover is not None or any(
            s["phase"] not in _ENDED for s in self.setups.values()
        )

    def master(self) -> Node | None:
        return next((n for n in self.manager.nodes.values()
                     if n.core.record.role == MASTER and n.state != "TERMINATING"), None)

    def settingUp(self, nodeId: int) -> bool:
        setup = self.setups.get(nodeId)
        return setup is not None and setup["phase"] not in _ENDED

    def dependents(self, nodeId: int) -> list[int]:
        """The nodes that replicate, or are being set up to, from master C{nodeId}."""
        return sorted(n.id for n in self.manager.nodes.values()
                      if n.id != nodeId and n.state != "TERMINATING"
                      and (n.core.record.role == SLAVE or self.settingUp(n.id)))

    async def restore(self) -> None:
        """
        Read what the registry keeps (after a start); resume watching the
        seeds a crash interrupted, and report an interrupted switchover.
        """
        registry = self.manager.registry
        self._password = await registry.getMeta(_PASSWORD)
        for key, value in (await registry.metaWithPrefix(_SETUP)).items():
            nodeId = int(key[len(_SETUP):])
            if nodeId not in self.manager.nodes:
                await registry.setMeta(key, None)
                continue
            self.setups[nodeId] = json.loads(value)
        switchover = await registry.getMeta(_SWITCHOVER)
        if switchover is not None:
            step = json.loads(switchover)
            self._interrupted = step
            self.error = (
                f"a switchover from node {step['from']} to node {step['to']} was interrupted "
                f"by a manager restart (at: {step['step']}); call set_up_replica_master "
                f"{{\"id\": {step['to']}}} again to finish it"
            )
            log.warn("{error}", error=self.error)
        for nodeId, setup in self.setups.items():
            if setup["phase"] not in _ENDED:
                log.info("node {node}: resuming the watch of its replication set-up "
                         "(interrupted by a manager restart)", node=nodeId)
                setup["resumed"] = True
                self._watch(nodeId)

    def stop(self) -> None:
        """Stop the watchers (the manager stops); their set-ups go on on the agents."""
        for d in list(self._watchers.values()):
            d.cancel()

    def forget(self, nodeId: int) -> None:
        """Node C{nodeId} is gone."""
        self.setups.pop(nodeId, None)
        watcher = self._watchers.pop(nodeId, None)
        if watcher is not None:
            watcher.cancel()
        self.manager._track(Deferred.fromCoroutine(
            self.manager.registry.setMeta(f"{_SETUP}{nodeId}", None)))

    async def _saveSetup(self, nodeId: int) -> None:
        setup = self.setups.get(nodeId)
        await self.manager.registry.setMeta(
            f"{_SETUP}{nodeId}", None if setup is None else json.dumps(setup))

    async def _setRole(self, node: Node, role: str | None) -> None:
        if node.core.record.role != role:
            log.info("node {node}: role {old} -> {new}", node=node.id,
                     old=node.core.record.role, new=role)
            node.core.record.role = role
            node.core.save()
        await node.core.flush()

    async def password(self) -> str:
        """The replication account's password: made once, kept in the registry."""
        if self._password is None:
            password = secrets.token_urlsafe(24)
            await self.manager.registry.setMeta(_PASSWORD, password)
            self._password = password
        return self._password

    # What the API shows.

    def nodeReplication(self, node: Node) -> dict[str, Any] | None:
        """The C{replication} object of a node's info, or None if there is nothing to show."""
        reported = node.core.agentInfo.get("replication")
        shown: dict[str, Any] = {}
        if isinstance(reported, dict):
            shown = {k: reported[k] for k in _SHOWN if k in reported}
        setup = self.setups.get(node.id)
        if setup is not None:
            shown["setup"] = self._showSetup(setup)
        return shown or None

    def _showSetup(self, setup: dict[str, Any]) -> dict[str, Any]:
        shown = {k: v for k, v in setup.items() if k not in ("started", "ended")}
        end = setup.get("ended") or self.clock.seconds()
        shown["seconds"] = round(max(0.0, end - setup["started"]), 3)
        return shown

    def setupError(self, nodeId: int) -> str | None:
        setup = self.setups.get(nodeId)
        if setup is not None and setup.get("error"):
            return f"replication set-up ({setup['kind']}) failed: {setup['error']}"
        return None

    def serviceInfo(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if self.switchover is not None:
            info["switchover"] = dict(self.switchover)
        if self.error:
            info["replication_error"] = self.error
        return info

    # Helpers.

    async def _call(self, node: Node, method: str, params: dict[str, Any] | None = None,
                    timeout: float | None = None) -> Any:
        """Call an agent; its answer's C{return}.  Errors name the node."""
        client: AgentClient | None = self.manager.client(node)
        if client is None:
            raise OperationFailed(f"node {node.id} has no address yet")
        seconds = timeout or self.manager.config.agent_call_timeout
        try:
            result = await self.manager._timed(
                client.call(method, params or {}, timeout=seconds), seconds + 1)
        except RPCError as e:
            raise type(e)(f"node {node.id}: {method}: {e.message}", e.data) from None
        except Exception as e:
            raise OperationFailed(f"node {node.id}: {method}: {describe(e)}") from None
        return result.get("return") if isinstance(result, dict) else result

    def _requireRunning(self, node: Node, what: str) -> None:
        if node.state != "RUNNING" or node.core.unreachable:
            state = "unreachable" if node.core.unreachable else node.state
            raise WrongState(f"node {node.id} is {state}; {what} needs it RUNNING",
                             {"serviceNodeId": node.id, "state": node.state})

    def _refuseBusy(self, what: str) -> None:
        if self.switchover is not None or self._masterBusy:
            raise Conflict(f"a change of the replication master is in progress; {what} "
                           "must wait until it ends")

    # The master.

    async def setUpMaster(self, nodeId: int) -> dict[str, Any]:
        """
        Make node C{nodeId} the master (see the module's docstring).

        @return: C{{"id", "role", "changed", ...}} with the master's coordinates.
        @raise WrongState: the node is not RUNNING.
        @raise Conflict: another change of master, or a set-up of this node, runs.
        """
        await self.manager._ensureUsable()
        node = self.manager.node(nodeId)
        current = self.master()
        if current is node and self.error is None:
            return {"id": nodeId, "role": MASTER, "changed": False,
                    "message": f"node {nodeId} is already the master; nothing changed"}
        if (current is not None and current is not node) or self.error is not None:
            return await self.promote(nodeId)
        self._requireRunning(node, "set_up_replica_master")
        self._refuseBusy("set_up_replica_master")
        if self.settingUp(nodeId):
            raise Conflict(f"node {nodeId} is being set up as a slave; wait until it ends")
        self._masterBusy = True
        try:
            coordinates = await self._call(node, "set_up_replica_master", {
                "server_id": node.id, "repl_user": REPL_USER,
                "repl_password": await self.password()})
            # Its server may have restarted (binary log on): see it up again
            # now, not at the next poll.
            await self.manager._probe(node)
            await self._setRole(node, MASTER)
        finally:
            self._masterBusy = False
        log.info("node {node} is the replication master", node=nodeId)
        shown = {k: v for k, v in (coordinates or {}).items()
                 if k in ("master_log_file", "master_log_pos", "gtid_binlog_pos", "server_id")}
        return {"id": nodeId, "role": MASTER, "changed": True, **shown}

    async def promote(self, nodeId: int) -> dict[str, Any]:
        """
        The controlled switchover to slave C{nodeId} (see the module's
        docstring).  Returns once the new master is writable and the roles
        are recorded; the others follow it in the background.

        @raise WrongState: a node is not RUNNING, or C{nodeId} is not a slave.
        @raise Timeout, OperationFailed: a slave did not catch up, or a step
            failed; the old master is writable again and nothing changed.
        """
        await self.manager._ensureUsable()
        node = self.manager.node(nodeId)
        self._refuseBusy("set_up_replica_master")
        old = self.master()
        if old is None:
            self.error = None
            return await self.setUpMaster(nodeId)
        if old is node:
            if self.error is None:
                return await self.setUpMaster(nodeId)
            return await self._resumeFollow(node)
        if self.settingUp(nodeId):
            raise Conflict(f"node {nodeId} is being set up as a slave; wait until it ends")
        pending = sorted(i for i in self.setups if self.settingUp(i))
        if pending:
            raise Conflict(f"nodes {', '.join(map(str, pending))} are being set up as slaves; "
                           "a switchover must wait until they are done", {"nodes": pending})
        if node.core.record.role != SLAVE:
            raise WrongState(f"node {nodeId} is not a slave of the master (node {old.id}); "
                             "make it a slave first (set_up_replica_slave)")
        self._requireRunning(node, "a switchover")
        self._requireRunning(old, "a switchover (the old master)")
        followers = [n for n in self.manager.nodes.values()
                     if n is not node and n.core.record.role == SLAVE]
        for n in followers:
            self._requireRunning(n, "a switchover (every slave)")
        step: dict[str, Any] = {"from": old.id, "to": nodeId, "step": "read-only"}
        self._masterBusy = True
        self.switchover = step
        try:
            await self.manager.registry.setMeta(_SWITCHOVER, json.dumps(step))
            position = await self._stopWrites(old, [node, *followers])
            step["step"] = "promote"
            await self.manager.registry.setMeta(_SWITCHOVER, json.dumps(step))
            try:
                await self._call(node, "promote")
            except Exception:
                await self._undoReadOnly(old)
                raise
            await self.manager._probe(node)
            followers.append(old)
            step.update(step="follow", followers=[n.id for n in followers])
            await self.manager.registry.setMeta(_SWITCHOVER, json.dumps(step))
            await self._setRole(old, None)
            await self._setRole(node, MASTER)
            for n in followers:
                await self._setRole(n, None)
                self.setups[n.id] = {"kind": "follow", "phase": "starting", "master": node.id,
                                     "started": self.clock.seconds()}
                await self._saveSetup(n.id)
            await self.manager.registry.setMeta(_SWITCHOVER, None)
            self.error = None
        finally:
            self.switchover = None
            self._masterBusy = False
        log.info("switchover: node {new} is the master (was node {old})", new=nodeId, old=old.id)
        for n in followers:
            self.manager._track(Deferred.fromCoroutine(self._follow(n, node, position)))
        return {"id": nodeId, "role": MASTER, "changed": True, "previous_master": old.id,
                "gtid_pos": position, "following": sorted(n.id for n in followers)}

    async def _resumeFollow(self, master: Node) -> dict[str, Any]:
        """
        After a crash between the promotion and the end of a switchover:
        the roles are set again and the nodes that do not replicate yet
        follow the new master from their own GTID position.
        """
        step = self._interrupted or {}
        followers = [self.manager.nodes[i] for i in step.get("followers", [])
                     if i in self.manager.nodes and i != master.id]
        await self._setRole(master, MASTER)
        started = []
        for n in followers:
            if n.core.record.role == SLAVE:
                continue
            await self._setRole(n, None)
            status = await self._call(n, "get_replication_status")
            self.setups[n.id] = {"kind": "follow", "phase": "starting", "master": master.id,
                                 "started": self.clock.seconds()}
            started.append((n, str(status["gtid_current_pos"])))
        await self.manager.registry.setMeta(_SWITCHOVER, None)
        self.error = self._interrupted = None
        for n, position in started:
            self.manager._track(Deferred.fromCoroutine(self._follow(n, master, position)))
        return {"id": master.id, "role": MASTER, "changed": True,
                "following": sorted(n.id for n, _ in started)}

    async def _stopWrites(self, old: Node, slaves: list[Node]) -> str:
        """
        Make the old master read-only, and wait until every slave has
        applied its last transaction; undo the read-only if one does not.

        @return: the GTID position every slave has reached.
        """
        await self._call(old, "set_read_only", {"value": True})
        try:
            status = await self._call(old, "get_replication_status")
            position = str(status["gtid_binlog_pos"])
            timeout = self.manager.config.switchover_timeout
            waits = [Deferred.fromCoroutine(self._call(
                n, "wait_for_gtid", {"gtid_pos": position, "timeout": int(timeout)},
                timeout=timeout + 10)) for n in slaves]
            outcomes = await DeferredList(waits, consumeErrors=True)
            failed = [f"{value.value}" for ok, value in outcomes if not ok]
            if failed:
                raise OperationFailed(
                    "switchover abandoned, the old master is writable again: "
                    + "; ".join(failed))
        except BaseException:
            await self._undoReadOnly(old)
            raise
        return position

    async def _undoReadOnly(self, old: Node) -> None:
        """A switchover failed before the promotion: the old master takes writes again."""
        try:
            await self._call(old, "set_read_only", {"value": False})
        except Exception as e:
            log.error("node {node}: could not make the old master writable again: {why}",
                      node=old.id, why=describe(e))
            return
        await self.manager.registry.setMeta(_SWITCHOVER, None)

    async def _follow(self, node: Node, master: Node, position: str) -> None:
        setup = self.setups[node.id]
        await self._saveSetup(node.id)
        try:
            await self._call(node, "set_up_replica_slave", {
                **await self._masterParams(master, node), "master_gtid_pos": position})
        except Exception as e:
            setup.update(phase="failed", error=describe(e), ended=self.clock.seconds())
            log.warn("node {node}: following the new master failed: {why}", node=node.id,
                     why=setup["error"])
        else:
            setup.update(phase="replicating", ended=self.clock.seconds())
            await self._setRole(node, SLAVE)
        await self._saveSetup(node.id)

    async def _masterParams(self, master: Node, slave: Node) -> dict[str, Any]:
        record = master.core.record
        if not record.ip or not record.mysqld_port:
            raise WrongState(f"the master (node {master.id}) has no known database address yet")
        return {
            "master_host": record.ip, "master_port": record.mysqld_port,
            "slave_server_id": slave.id, "repl_user": REPL_USER,
            "repl_password": await self.password(),
        }

    # Slaves.

    async def attachSlave(self, nodeId: int) -> dict[str, Any]:
        """
        Start making node C{nodeId} a slave of the master, seeded from it;
        returns at once (C{"state": "SEEDING"}), the node's info then shows
        the progress.

        @raise WrongState: no master, or a node is not RUNNING.
        @raise Conflict: the node is the master, is being set up, or the
            master is changing.
        """
        await self.manager._ensureUsable()
        node = self.manager.node(nodeId)
        master = self.master()
        if master is None:
            raise WrongState("the service has no replication master yet; call "
                             "set_up_replica_master first")
        if node is master:
            raise Conflict(f"node {nodeId} is the master; it cannot be its own slave")
        if node.core.record.role == SLAVE:
            return {"id": nodeId, "role": SLAVE, "changed": False,
                    "message": f"node {nodeId} is already a slave of node {master.id}; "
                               "nothing changed"}
        if self.settingUp(nodeId):
            raise Conflict(f"node {nodeId} is already being set up as a slave "
                           f"(phase {self.setups[nodeId]['phase']})",
                           {"phase": self.setups[nodeId]["phase"]})
        self._refuseBusy("set_up_replica_slave")
        self._requireRunning(node, "set_up_replica_slave")
        self._requireRunning(master, "set_up_replica_slave (the master)")
        url = self.manager._address(master)
        assert url is not None
        params = {**await self._masterParams(master, node), "master_agent_url": url,
                  "master_agent_token": master.core.record.token}
        setup: dict[str, Any] = {"kind": "seed", "phase": "configuring", "bytes": 0,
                                 "master": master.id, "started": self.clock.seconds()}
        self.setups[nodeId] = setup
        try:
            await self._call(node, "set_up_replica_slave", params)
        except Exception as e:
            setup.update(phase="failed", error=describe(e) if not isinstance(e, RPCError)
                         else e.message, ended=self.clock.seconds())
            await self._saveSetup(nodeId)
            raise
        await self._saveSetup(nodeId)
        log.info("node {node}: seeding from the master (node {master})", node=nodeId,
                 master=master.id)
        self._watch(nodeId)
        return {"id": nodeId, "state": "SEEDING", "phase": setup["phase"], "master": master.id}

    def _watch(self, nodeId: int) -> None:
        d = Deferred.fromCoroutine(self._watchSeed(nodeId))
        self._watchers[nodeId] = d

        def done(result: Any) -> Any:
            if self._watchers.get(nodeId) is d:
                del self._watchers[nodeId]
            return result

        d.addBoth(done)
        self.manager._track(d)

    async def _watchSeed(self, nodeId: int) -> None:
        setup = self.setups[nodeId]
        while True:
            await deferLater(self.clock, self.watchInterval)
            node = self.manager.nodes.get(nodeId)
            if node is None or self.setups.get(nodeId) is not setup:
                return
            if node.state != "RUNNING":
                await self._endSetup(node, setup, f"the node became {node.state}")
                return
            try:
                status = await self._call(node, "get_replication_status",
                                          timeout=self.manager.config.probe_timeout)
            except CancelledError:
                raise
            except Exception as e:
                setup["poll_error"] = describe(e)
                continue
            setup.pop("poll_error", None)
            phase = status.get("phase")
            last = status.get("last_setup")
            for source in (status, last if isinstance(last, dict) else {}):
                if isinstance(source.get("bytes"), int):
                    setup["bytes"] = source["bytes"]
                if isinstance(source.get("phase_seconds"), dict):
                    setup["phase_seconds"] = source["phase_seconds"]
            if status.get("role") == "slave" and phase == "replicating":
                setup["phase"] = "replicating"
                setup["ended"] = self.clock.seconds()
                await self._setRole(node, SLAVE)
                await self._saveSetup(nodeId)
                log.info("node {node}: replicating from the master", node=nodeId)
                return
            if phase == "failed":
                await self._endSetup(node, setup, str(status.get("error") or "failed"))
                return
            if phase in ("configuring", "copying", "starting"):
                if setup["phase"] != phase:
                    setup["phase"] = phase
                    await self._saveSetup(nodeId)
                continue
            await self._endSetup(
                node, setup, "interrupted: the node's agent reports no set-up in progress "
                "(it or the manager restarted during the seed); call set_up_replica_slave again")
            return

    async def _endSetup(self, node: Node, setup: dict[str, Any], error: str) -> None:
        setup.update(phase="failed", error=error, ended=self.clock.seconds())
        log.warn("node {node}: replication set-up failed: {error}", node=node.id, error=error)
        await self._saveSetup(node.id)

    # Writes.

    def writeTargets(self, target: int | str) -> tuple[list[int], dict[str, str]] | None:
        """
        Where a write aimed at C{target} goes once there is a master: the
        master, plus (for C{"all"}) the nodes outside replication.

        @return: the node ids to call and C{{node id: note}} for the nodes
            reached by replication; L{None} when there is no master (the
            write goes where it is aimed).
        @raise Conflict: the master is changing.
        """
        master = self.master()
        if master is None:
            return None
        self._refuseBusy("a write")
        notes: dict[str, str] = {}
        replicated = f"by replication from node {master.id}"
        if target == "all":
            ids = [master.id]
            for n in sorted(self.manager.nodes.values(), key=lambda n: n.id):
                if n is master or n.state == "TERMINATING":
                    continue
                if n.state == "ERROR":
                    notes[str(n.id)] = f"skipped: node is in ERROR ({n.core.record.error})"
                    continue
                if n.core.record.role == SLAVE or self.settingUp(n.id):
                    notes[str(n.id)] = replicated
                else:
                    ids.append(n.id)
            return ids, notes
        assert isinstance(target, int)
        node = self.manager.node(target)
        if node.core.record.role == SLAVE or self.settingUp(target):
            return [master.id], {str(target): replicated}
        return [target], notes
