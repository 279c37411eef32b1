"""
SQL work on the node's server, through an adbapi connection pool.

Values are always bound parameters.  Names that MySQL does not let us bind
(user and host in account names are bound as string literals, which MySQL
accepts; database names are identifiers) are validated against strict
patterns first and identifiers are backtick-quoted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import pymysql
from twisted.enterprise import adbapi
from twisted.logger import Logger

from conpaassql.rpc.errors import InvalidParams, MySQLError, NotFound

log = Logger()

USERNAME = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}"
HOST = r"[A-Za-z0-9%_.:\-]{1,255}"
DATABASE = r"[A-Za-z0-9_$]{1,64}"

#: Accounts the agent itself relies on: never deleted or altered by a user call.
PROTECTED_USERS = frozenset({"root", "mariadb.sys", "mysql.sys", "mysql.session",
                             "mysql.infoschema", "PUBLIC"})
PROTECTED_PREFIX = "conpaassql_"

#: The server's own schemas: privileges on them (write access to the grant
#: tables in C{mysql}) would let a user make itself root.
SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})

#: Privileges a user may be given on a database (never GRANT OPTION unless asked).
PRIVILEGES = (
    "ALL PRIVILEGES", "SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP",
    "INDEX", "ALTER", "CREATE TEMPORARY TABLES", "LOCK TABLES", "EXECUTE",
    "CREATE VIEW", "SHOW VIEW", "CREATE ROUTINE", "ALTER ROUTINE", "EVENT",
    "TRIGGER", "REFERENCES",
)

#: The data privileges granted on C{*.*} when C{databases} is C{["*"]}.
DATA_PRIVILEGES = tuple(p for p in PRIVILEGES if p != "ALL PRIVILEGES")

#: Counters of SHOW GLOBAL STATUS that get_performance reports.
STATUS_COUNTERS = (
    "Uptime", "Queries", "Questions", "Com_select", "Com_insert", "Com_update",
    "Com_delete", "Com_replace", "Com_commit", "Com_rollback", "Connections",
    "Threads_connected", "Threads_running", "Max_used_connections", "Slow_queries",
    "Bytes_received", "Bytes_sent", "Aborted_clients", "Aborted_connects",
    "Innodb_rows_read", "Innodb_rows_inserted", "Innodb_rows_updated",
    "Innodb_rows_deleted", "Innodb_buffer_pool_read_requests",
    "Innodb_buffer_pool_reads", "Open_tables", "Created_tmp_disk_tables",
    # What the manager's performance figures also sum (writes, errors).
    "Com_insert_select", "Com_update_multi", "Com_delete_multi", "Com_replace_select",
    "Com_load", "Access_denied_errors",
)


def quoteIdentifier(name: str) -> str:
    if not re.fullmatch(DATABASE, name):
        raise InvalidParams(f"not a valid database name: {name[:64]!r}", "databases")
    return f"`{name}`"


def checkUser(username: str, host: str) -> None:
    if username in PROTECTED_USERS or username.startswith(PROTECTED_PREFIX):
        raise InvalidParams(
            f"user {username!r} is managed by the service and cannot be changed here",
            "username",
        )
    if not re.fullmatch(USERNAME, username):
        raise InvalidParams(
            "a username is 1 to 80 letters, digits, '_', '.' or '-', not starting with "
            f"'.' or '-': {username[:64]!r}",
            "username",
        )
    if not re.fullmatch(HOST, host):
        raise InvalidParams(
            f"a host is a hostname, an IP address, or a pattern with '%': {host[:64]!r}", "host"
        )


def _mysqlError(e: pymysql.MySQLError) -> MySQLError:
    code = e.args[0] if e.args and isinstance(e.args[0], int) else None
    message = e.args[1] if len(e.args) > 1 else str(e)
    return MySQLError(f"the database server refused: {message}", {"errno": code})


class Database:
    """
    The node's server, seen through a pool of PyMySQL connections.

    @param connectArgs: keyword arguments for C{pymysql.connect} (host/port
        or unix_socket, user, password).
    """

    def __init__(self, connectArgs: Mapping[str, Any], *, poolSize: int = 4) -> None:
        args = dict(connectArgs)
        args.setdefault("charset", "utf8mb4")
        args.setdefault("connect_timeout", 10)
        args.setdefault("read_timeout", 3600)
        args.setdefault("write_timeout", 3600)
        args["autocommit"] = True
        self.pool = adbapi.ConnectionPool(
            "pymysql", cp_min=1, cp_max=poolSize, cp_reconnect=True, cp_noisy=False, **args
        )

    def close(self) -> None:
        self.pool.close()

    async def _run(self, interaction: Any, *args: Any) -> Any:
        try:
            return await self.pool.runInteraction(interaction, *args)
        except pymysql.MySQLError as e:
            raise _mysqlError(e) from None

    async def transact(self, interaction: Any, *args: Any) -> Any:
        """
        Run C{interaction(cursor, *args)} on one connection, in one
        transaction (committed when it returns, rolled back if it raises).

        @return: a Deferred firing with what it returns.
        @raise MySQLError: the server refused a statement.
        """
        return await self._run(interaction, *args)

    async def query(self, sql: str, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        def run(txn: Any) -> list[tuple[Any, ...]]:
            txn.execute(sql, args)
            return list(txn.fetchall())

        return await self._run(run)

    async def ping(self) -> str:
        rows = await self.query("SELECT VERSION()")
        return str(rows[0][0])

    async def configureUser(
        self,
        username: str,
        password: str,
        host: str,
        databases: Sequence[str],
        privileges: Sequence[str],
        grantOption: bool,
    ) -> dict[str, Any]:
        """
        Create the account C{username@host}, or change its password if it
        exists, and grant C{privileges} on each of C{databases} (C{"*"} for
        every database, with the data privileges only).

        @return: a Deferred firing with C{created} and the grants made.
        """
        checkUser(username, host)
        targets = []
        for db in databases:
            if db.lower() in SYSTEM_SCHEMAS:
                raise InvalidParams(
                    f"{db!r} is one of the server's own databases; privileges on it are "
                    "not given through this call",
                    "databases",
                )
            targets.append("*.*" if db == "*" else f"{quoteIdentifier(db)}.*")
        for p in privileges:
            if p not in PRIVILEGES:
                raise InvalidParams(
                    f"unknown privilege {p[:40]!r}; choose from: {', '.join(PRIVILEGES)}",
                    "privileges",
                )

        def run(txn: Any) -> dict[str, Any]:
            txn.execute(
                "SELECT COUNT(*) FROM mysql.user WHERE User = %s AND Host = %s", (username, host)
            )
            exists = txn.fetchone()[0] > 0
            if exists:
                txn.execute("ALTER USER %s@%s IDENTIFIED BY %s", (username, host, password))
            else:
                txn.execute("CREATE USER %s@%s IDENTIFIED BY %s", (username, host, password))
            grants = []
            for target in targets:
                privs = privileges
                if target == "*.*" and "ALL PRIVILEGES" in privs:
                    privs = DATA_PRIVILEGES
                sql = f"GRANT {', '.join(privs)} ON {target} TO %s@%s"
                if grantOption:
                    sql += " WITH GRANT OPTION"
                txn.execute(sql, (username, host))
                grants.append({"on": target, "privileges": list(privs),
                               "grant_option": grantOption})
            return {"created": not exists, "grants": grants}

        return await self._run(run)

    async def deleteUser(self, username: str, host: str | None) -> list[str]:
        """
        Drop C{username} at C{host}, or at every host when C{host} is None.

        @return: a Deferred firing with the hosts dropped.
        @raise NotFound: no such account.
        """
        checkUser(username, host or "%")

        def run(txn: Any) -> list[str]:
            if host is None:
                txn.execute("SELECT Host FROM mysql.user WHERE User = %s", (username,))
            else:
                txn.execute(
                    "SELECT Host FROM mysql.user WHERE User = %s AND Host = %s", (username, host)
                )
            hosts = [row[0] for row in txn.fetchall()]
            for h in hosts:
                txn.execute("DROP USER %s@%s", (username, h))
            return hosts

        hosts = await self._run(run)
        if not hosts:
            where = f" at host {host!r}" if host is not None else ""
            raise NotFound(f"no user {username!r}{where}", {"username": username})
        return hosts

    async def listUsers(self) -> list[dict[str, Any]]:
        rows = await self.query(
            "SELECT User, Host FROM mysql.user WHERE User <> '' ORDER BY User, Host"
        )
        return [
            {
                "username": user,
                "location": host,
                "managed": user in PROTECTED_USERS or user.startswith(PROTECTED_PREFIX),
            }
            for user, host in rows
            if user not in ("mariadb.sys", "PUBLIC")
        ]

    async def globalStatus(self) -> dict[str, int]:
        rows = await self.query("SHOW GLOBAL STATUS")
        wanted = set(STATUS_COUNTERS)
        status: dict[str, int] = {}
        for name, value in rows:
            if name in wanted:
                try:
                    status[name] = int(value)
                except (TypeError, ValueError):
                    continue
        return status
