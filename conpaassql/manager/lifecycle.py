"""
The manager's own lifecycle: a state machine (Automat's
C{TypeMachineBuilder}) over the service states the original named::

    INIT --start--> PROLOGUE --polled--> RUNNING --shutdown--> EPILOGUE --nodesGone--> STOPPED
                       |  \\-----------------shutdown-----------^
                       +--startFailed--> ERROR

ADAPTING is RUNNING while nodes are PENDING, BOOTING or TERMINATING; it is
read from the nodes (L{conpaassql.manager.service.Manager.serviceState}),
not a state of this machine.  The current state's name is kept in
C{PhaseCore.phase}.
"""

from __future__ import annotations

from typing import Protocol

from automat import TypeMachineBuilder
from twisted.logger import Logger

__all__ = ["Lifecycle", "LifecycleMachine", "PhaseCore"]

log = Logger()


class Lifecycle(Protocol):
    def start(self) -> None:
        "The service starts: it opens its registry and driver."

    def startFailed(self, reason: str) -> None:
        "The registry or the driver could not be opened."

    def polled(self) -> None:
        "A poll cycle ended."

    def shutdown(self) -> bool:
        "shutdown was called; true when this begins the epilogue."

    def nodesGone(self) -> None:
        "Every node is terminated."


class PhaseCore:
    """The lifecycle's data: the state's name, and the error in ERROR."""

    def __init__(self) -> None:
        self.phase = "INIT"
        self.error: str | None = None

    def enter(self, phase: str, error: str | None = None) -> None:
        log.info("manager: {old} -> {new}", old=self.phase, new=phase)
        self.phase = phase
        if error is not None:
            self.error = error


builder = TypeMachineBuilder(Lifecycle, PhaseCore)
init = builder.state("INIT")
prologue = builder.state("PROLOGUE")
running = builder.state("RUNNING")
epilogue = builder.state("EPILOGUE")
stopped = builder.state("STOPPED")
error = builder.state("ERROR")


@init.upon(Lifecycle.start).to(prologue)
def _start(machine: Lifecycle, core: PhaseCore) -> None:
    core.enter("PROLOGUE")


@prologue.upon(Lifecycle.startFailed).to(error)
def _failed(machine: Lifecycle, core: PhaseCore, reason: str) -> None:
    core.enter("ERROR", reason)


@prologue.upon(Lifecycle.polled).to(running)
def _running(machine: Lifecycle, core: PhaseCore) -> None:
    core.enter("RUNNING")


for _state in (prologue, running):

    @_state.upon(Lifecycle.shutdown).to(epilogue)
    def _shutdown(machine: Lifecycle, core: PhaseCore) -> bool:
        core.enter("EPILOGUE")
        return True


@epilogue.upon(Lifecycle.nodesGone).to(stopped)
def _stopped(machine: Lifecycle, core: PhaseCore) -> None:
    core.enter("STOPPED")


# What means nothing in a state is an explicit loop.
init.upon(Lifecycle.polled).loop().returns(None)
init.upon(Lifecycle.shutdown).loop().returns(False)
init.upon(Lifecycle.startFailed).loop().returns(None)
init.upon(Lifecycle.nodesGone).loop().returns(None)
prologue.upon(Lifecycle.start).loop().returns(None)
prologue.upon(Lifecycle.nodesGone).loop().returns(None)
for _state in (running, epilogue, stopped, error):
    _state.upon(Lifecycle.start).loop().returns(None)
    _state.upon(Lifecycle.startFailed).loop().returns(None)
    _state.upon(Lifecycle.polled).loop().returns(None)
for _state in (epilogue, stopped, error):
    _state.upon(Lifecycle.shutdown).loop().returns(False)
for _state in (running, stopped, error):
    _state.upon(Lifecycle.nodesGone).loop().returns(None)

LifecycleMachine = builder.build()
