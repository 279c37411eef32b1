"""
The replication SQL of the two server flavors, generated from one code path.

MariaDB and MySQL 8 replicate alike but spell it differently:

  - MariaDB: C{CHANGE MASTER TO MASTER_HOST=... MASTER_USE_GTID=slave_pos},
    C{START SLAVE}, C{SHOW SLAVE STATUS}, C{gtid_slave_pos},
    C{MASTER_GTID_WAIT()}, C{gtid_strict_mode};
  - MySQL 8: C{CHANGE REPLICATION SOURCE TO SOURCE_HOST=...
    SOURCE_AUTO_POSITION=1}, C{START REPLICA}, C{SHOW REPLICA STATUS},
    C{gtid_purged}, C{WAIT_FOR_EXECUTED_GTID_SET()}, C{gtid_mode},
    C{super_read_only}.

L{Dialect} holds those differences and nothing else; it runs no SQL.
C{CHANGE MASTER} cannot take bound parameters, so its host, port, user and
log file are validated here against strict patterns, and its string values
are given as SQL literals already quoted by the server itself (C{SELECT
QUOTE(%s)}, see L{conpaassql.agent.replication}); L{Dialect.changeSource}
checks that each literal is one well-formed quoted string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conpaassql.agent.mycnf import validate_host
from conpaassql.rpc.errors import InvalidParams

__all__ = [
    "BINLOG_FILE",
    "GTID_POS",
    "REPL_USER",
    "Dialect",
    "checkBinlogFile",
    "checkGtidPos",
    "checkMasterHost",
    "checkReplUser",
    "isQuotedLiteral",
]

#: A replication account name (no quoting needed, never a system account).
REPL_USER = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}"
#: A binary log file name as SHOW MASTER STATUS gives it.
BINLOG_FILE = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}"
#: A MariaDB GTID position (domain-server-seqno, comma separated, maybe empty).
MARIADB_GTID_POS = r"(?:[0-9]{1,10}-[0-9]{1,10}-[0-9]{1,20}(?:,[0-9]{1,10}-[0-9]{1,10}-[0-9]{1,20})*)?"
#: A MySQL GTID set (uuid:interval[:interval...], comma separated, maybe empty).
MYSQL_GTID_SET = (
    r"(?:[0-9a-fA-F-]{36}(?::[0-9]{1,20}(?:-[0-9]{1,20})?)+"
    r"(?:,\s*[0-9a-fA-F-]{36}(?::[0-9]{1,20}(?:-[0-9]{1,20})?)+)*)?"
)
GTID_POS = rf"{MARIADB_GTID_POS}|{MYSQL_GTID_SET}"

#: Accounts a replication user may never be.
_SYSTEM_USERS = frozenset({"root", "mariadb.sys", "mysql.sys", "mysql.session",
                           "mysql.infoschema", "PUBLIC"})

_VERSION = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)")


def checkMasterHost(host: str, param: str = "master_host") -> str:
    """
    @return: C{host} if it is an IP address or a DNS name.
    @raise InvalidParams: otherwise.
    """
    try:
        return validate_host(host)
    except ValueError:
        raise InvalidParams(
            f"'{param}' must be an IP address or a host name: {host[:64]!r}", param
        ) from None


def checkReplUser(user: str, param: str = "repl_user") -> str:
    if not re.fullmatch(REPL_USER, user) or user in _SYSTEM_USERS:
        raise InvalidParams(
            f"'{param}' must be 1 to 80 letters, digits, '_', '.' or '-' (not starting with "
            f"'.' or '-') and not a system account: {user[:64]!r}",
            param,
        )
    return user


def checkBinlogFile(name: str, param: str = "master_log_file") -> str:
    if not re.fullmatch(BINLOG_FILE, name):
        raise InvalidParams(f"'{param}' is not a binary log file name: {name[:64]!r}", param)
    return name


def checkGtidPos(pos: str, param: str = "master_gtid_pos") -> str:
    if not re.fullmatch(GTID_POS, pos):
        raise InvalidParams(f"'{param}' is not a GTID position: {pos[:64]!r}", param)
    return pos


def isQuotedLiteral(literal: str) -> bool:
    """
    Whether C{literal} is exactly one single-quoted SQL string as QUOTE()
    produces it (every C{'} and C{\\} inside escaped with C{\\}), so that
    it cannot end early and inject anything.
    """
    return re.fullmatch(r"'(?:[^'\\]|\\.)*'", literal, re.DOTALL) is not None


def _version(text: str | None) -> tuple[int, int, int]:
    match = _VERSION.search(text or "")
    if not match:
        return (0, 0, 0)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3)))


@dataclass(frozen=True)
class Dialect:
    """
    The replication statements of one server flavor and version.

    @ivar flavor: C{"mariadb"} or C{"mysql"}.
    @ivar version: the server version, e.g. C{(10, 11, 6)}.
    """

    flavor: str
    version: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def fromVersion(cls, versionString: str | None, flavor: str | None = None) -> Dialect:
        """
        Build the dialect from the server's version string (C{SELECT
        VERSION()}: MariaDB's contains C{MariaDB}) or a known flavor.
        """
        text = versionString or ""
        if flavor not in ("mariadb", "mysql"):
            flavor = "mariadb" if "mariadb" in text.lower() else "mysql"
        return cls(flavor, _version(text))

    @property
    def mariadb(self) -> bool:
        return self.flavor == "mariadb"

    @property
    def _replicaWords(self) -> bool:
        # MySQL 8.0.22 introduced START REPLICA / SHOW REPLICA STATUS.
        return not self.mariadb and self.version >= (8, 0, 22)

    # -- my.cnf

    def masterOptions(self, serverId: int, logBin: str) -> dict[str, str]:
        """The C{[mysqld]} options of a master (and of a promotable slave)."""
        options = {
            "server_id": str(serverId),
            "log_bin": logBin,
            "binlog_format": "ROW",
            "log_slave_updates": "ON",
            "read_only": "OFF",
        }
        if self.mariadb:
            options["gtid_strict_mode"] = "ON"
        else:
            options["gtid_mode"] = "ON"
            options["enforce_gtid_consistency"] = "ON"
            options["super_read_only"] = "OFF"
        return options

    def slaveOptions(self, serverId: int, logBin: str, relayLog: str) -> dict[str, str]:
        """The C{[mysqld]} options of a slave: a master's, read-only, with a relay log."""
        options = self.masterOptions(serverId, logBin)
        options["relay_log"] = relayLog
        options["read_only"] = "ON"
        if not self.mariadb:
            options["super_read_only"] = "ON"
        return options

    def restartOptions(self) -> frozenset[str]:
        """Options that only take effect at a server restart."""
        names = {"log_bin", "log_slave_updates", "relay_log"}
        if not self.mariadb:
            names |= {"gtid_mode", "enforce_gtid_consistency"}
        return frozenset(names)

    # -- account

    def replicationPrivileges(self) -> str:
        """What the replication account is granted on C{*.*}: nothing else."""
        return "REPLICATION SLAVE"

    # -- source (master) side

    def masterStatus(self) -> str:
        if not self.mariadb and self.version >= (8, 4, 0):
            return "SHOW BINARY LOG STATUS"
        return "SHOW MASTER STATUS"

    def gtidPositions(self) -> str:
        """A query of one row: the binlog GTID position and the current one."""
        if self.mariadb:
            return "SELECT @@GLOBAL.gtid_binlog_pos, @@GLOBAL.gtid_current_pos"
        return "SELECT @@GLOBAL.gtid_executed, @@GLOBAL.gtid_executed"

    def resetBinlog(self) -> str:
        if not self.mariadb and self.version >= (8, 4, 0):
            return "RESET BINARY LOGS AND GTIDS"
        return "RESET MASTER"

    # -- replica (slave) side

    def changeSource(
        self,
        host: str,
        port: int,
        userLiteral: str,
        passwordLiteral: str,
        *,
        logFile: str | None = None,
        logPos: int | None = None,
        connectRetry: int = 5,
    ) -> str:
        """
        The C{CHANGE MASTER} / C{CHANGE REPLICATION SOURCE} statement.
        Without C{logFile} replication starts from the GTID position
        (MariaDB: C{gtid_slave_pos}; MySQL: auto-positioning).

        @param userLiteral: the account name as a quoted SQL literal.
        @param passwordLiteral: the password as a quoted SQL literal.
        @raise InvalidParams: a value that must not go into SQL.
        """
        host = checkMasterHost(host)
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise InvalidParams(f"'master_port' must be 1 to 65535: {port!r}", "master_port")
        for name, literal in (("repl_user", userLiteral), ("repl_password", passwordLiteral)):
            if not isQuotedLiteral(literal):
                raise InvalidParams(f"'{name}' was not quoted as one SQL string", name)
        if not isinstance(connectRetry, int) or not 1 <= connectRetry <= 3600:
            raise InvalidParams("connect retry must be 1 to 3600 seconds")
        word = "MASTER" if self.mariadb else "SOURCE"
        parts = [
            f"{word}_HOST='{host}'",
            f"{word}_PORT={port}",
            f"{word}_USER={userLiteral}",
            f"{word}_PASSWORD={passwordLiteral}",
            f"{word}_CONNECT_RETRY={connectRetry}",
        ]
        if logFile is not None:
            checkBinlogFile(logFile)
            if not isinstance(logPos, int) or isinstance(logPos, bool) or logPos < 4:
                raise InvalidParams(
                    f"'master_log_pos' must be an integer of at least 4: {logPos!r}",
                    "master_log_pos",
                )
            parts += [f"{word}_LOG_FILE='{logFile}'", f"{word}_LOG_POS={logPos}"]
            if self.mariadb:
                parts.append("MASTER_USE_GTID=no")
            else:
                parts.append("SOURCE_AUTO_POSITION=0")
        elif self.mariadb:
            parts.append("MASTER_USE_GTID=slave_pos")
        else:
            parts.append("SOURCE_AUTO_POSITION=1")
        if not self.mariadb:
            # caching_sha2_password over a connection without TLS.
            parts.append("GET_SOURCE_PUBLIC_KEY=1")
        if self.mariadb:
            return "CHANGE MASTER TO " + ", ".join(parts)
        if self.version >= (8, 0, 23):
            return "CHANGE REPLICATION SOURCE TO " + ", ".join(parts)
        return "CHANGE MASTER TO " + ", ".join(parts).replace("SOURCE_", "MASTER_")

    def setGtidStart(self, seeded: bool) -> list[str]:
        """
        Statements (each with one C{%s} parameter, the GTID position, or
        none) that make the next GTID-based start begin right after that
        position.  C{seeded}: the server holds a fresh copy of the master
        taken at that position, so its own binary log starts there too
        (other servers can then follow it from that position after a
        switchover); MySQL always needs that.
        """
        if self.mariadb:
            if seeded:
                return ["SET GLOBAL gtid_binlog_state = %s", "SET GLOBAL gtid_slave_pos = %s"]
            return ["SET GLOBAL gtid_slave_pos = %s"]
        return [self.resetBinlog(), "SET GLOBAL gtid_purged = %s"]

    def startReplica(self) -> str:
        return "START REPLICA" if self._replicaWords else "START SLAVE"

    def stopReplica(self) -> str:
        return "STOP REPLICA" if self._replicaWords else "STOP SLAVE"

    def resetReplica(self) -> str:
        return "RESET REPLICA ALL" if self._replicaWords else "RESET SLAVE ALL"

    def replicaStatus(self) -> str:
        return "SHOW REPLICA STATUS" if self._replicaWords else "SHOW SLAVE STATUS"

    def setReadOnly(self, value: bool) -> list[str]:
        """
        Statements making the server read-only (for everyone without the
        privilege to bypass it: MariaDB's READ ONLY ADMIN, MySQL's SUPER
        unless super_read_only) or writable.
        """
        if self.mariadb:
            return [f"SET GLOBAL read_only = {'ON' if value else 'OFF'}"]
        if value:
            return ["SET GLOBAL read_only = ON", "SET GLOBAL super_read_only = ON"]
        return ["SET GLOBAL super_read_only = OFF", "SET GLOBAL read_only = OFF"]

    def waitForGtid(self) -> str:
        """
        A query (parameters: GTID position, timeout in seconds) answering
        one row, 0 when the position was reached.
        """
        if self.mariadb:
            return "SELECT MASTER_GTID_WAIT(%s, %s)"
        return "SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s)"

    # -- the seed

    def dumpOptions(self) -> list[str]:
        """
        The dump program's options for a consistent, non-locking snapshot
        that records its replication coordinates as comments.
        """
        common = [
            "--single-transaction",
            "--quick",
            "--routines",
            "--triggers",
            "--events",
            "--hex-blob",
            "--add-drop-database",
            "--default-character-set=utf8mb4",
            "--max-allowed-packet=1G",
        ]
        if self.mariadb:
            return [*common, "--gtid", "--master-data=2"]
        source = "--source-data=2" if self.version >= (8, 0, 26) else "--master-data=2"
        return [*common, "--set-gtid-purged=COMMENTED", source]
