"""
The replication SQL of both flavors (MariaDB and MySQL 8), the checks on
what goes into it, and the reading of a snapshot stream's coordinates.
MySQL 8 cannot be installed here, so its dialect is tested as text only.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from conpaassql.agent.replsql import (
    Dialect,
    checkGtidPos,
    checkMasterHost,
    checkReplUser,
    isQuotedLiteral,
)
from conpaassql.agent.snapshot import SeedResult, _Scanner, dumpCoordinates, trailer
from conpaassql.rpc.errors import InvalidParams

MARIADB = Dialect.fromVersion("10.11.6-MariaDB-0+deb12u1-log")
MYSQL = Dialect.fromVersion("8.0.36")
MYSQL84 = Dialect.fromVersion("8.4.1")


class DialectTests(SynchronousTestCase):
    def test_flavor_from_version(self) -> None:
        self.assertEqual(MARIADB.flavor, "mariadb")
        self.assertEqual(MARIADB.version, (10, 11, 6))
        self.assertEqual(MYSQL.flavor, "mysql")
        self.assertEqual(Dialect.fromVersion("8.0.36", "mariadb").flavor, "mariadb")
        self.assertEqual(Dialect.fromVersion(None).version, (0, 0, 0))

    def test_change_source_gtid(self) -> None:
        self.assertEqual(
            MARIADB.changeSource("10.0.0.5", 3306, "'repl'", "'pw'"),
            "CHANGE MASTER TO MASTER_HOST='10.0.0.5', MASTER_PORT=3306, MASTER_USER='repl', "
            "MASTER_PASSWORD='pw', MASTER_CONNECT_RETRY=5, MASTER_USE_GTID=slave_pos",
        )
        self.assertEqual(
            MYSQL.changeSource("db1.example.org", 3307, "'repl'", "'pw'"),
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='db1.example.org', SOURCE_PORT=3307, "
            "SOURCE_USER='repl', SOURCE_PASSWORD='pw', SOURCE_CONNECT_RETRY=5, "
            "SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1",
        )

    def test_change_source_coordinates(self) -> None:
        self.assertEqual(
            MARIADB.changeSource("10.0.0.5", 3306, "'r'", "'p'", logFile="mysql-bin.000002",
                                 logPos=1234),
            "CHANGE MASTER TO MASTER_HOST='10.0.0.5', MASTER_PORT=3306, MASTER_USER='r', "
            "MASTER_PASSWORD='p', MASTER_CONNECT_RETRY=5, MASTER_LOG_FILE='mysql-bin.000002', "
            "MASTER_LOG_POS=1234, MASTER_USE_GTID=no",
        )
        self.assertEqual(
            MYSQL.changeSource("10.0.0.5", 3306, "'r'", "'p'", logFile="binlog.000002",
                               logPos=157),
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='10.0.0.5', SOURCE_PORT=3306, "
            "SOURCE_USER='r', SOURCE_PASSWORD='p', SOURCE_CONNECT_RETRY=5, "
            "SOURCE_LOG_FILE='binlog.000002', SOURCE_LOG_POS=157, SOURCE_AUTO_POSITION=0, "
            "GET_SOURCE_PUBLIC_KEY=1",
        )

    def test_old_mysql_spelling(self) -> None:
        old = Dialect.fromVersion("8.0.20")
        self.assertTrue(old.changeSource("h", 1, "'u'", "'p'").startswith(
            "CHANGE MASTER TO MASTER_HOST='h', MASTER_PORT=1"))
        self.assertEqual(old.startReplica(), "START SLAVE")

    def test_statements(self) -> None:
        table = [
            ("startReplica", "START SLAVE", "START REPLICA"),
            ("stopReplica", "STOP SLAVE", "STOP REPLICA"),
            ("resetReplica", "RESET SLAVE ALL", "RESET REPLICA ALL"),
            ("replicaStatus", "SHOW SLAVE STATUS", "SHOW REPLICA STATUS"),
            ("masterStatus", "SHOW MASTER STATUS", "SHOW MASTER STATUS"),
            ("resetBinlog", "RESET MASTER", "RESET MASTER"),
            ("waitForGtid", "SELECT MASTER_GTID_WAIT(%s, %s)",
             "SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s)"),
            ("replicationPrivileges", "REPLICATION SLAVE", "REPLICATION SLAVE"),
        ]
        for name, mariadb, mysql in table:
            self.assertEqual(getattr(MARIADB, name)(), mariadb, name)
            self.assertEqual(getattr(MYSQL, name)(), mysql, name)
        self.assertEqual(MYSQL84.masterStatus(), "SHOW BINARY LOG STATUS")
        self.assertEqual(MYSQL84.resetBinlog(), "RESET BINARY LOGS AND GTIDS")

    def test_read_only(self) -> None:
        self.assertEqual(MARIADB.setReadOnly(True), ["SET GLOBAL read_only = ON"])
        self.assertEqual(MYSQL.setReadOnly(True),
                         ["SET GLOBAL read_only = ON", "SET GLOBAL super_read_only = ON"])
        self.assertEqual(MYSQL.setReadOnly(False),
                         ["SET GLOBAL super_read_only = OFF", "SET GLOBAL read_only = OFF"])

    def test_gtid_start(self) -> None:
        self.assertEqual(MARIADB.setGtidStart(False), ["SET GLOBAL gtid_slave_pos = %s"])
        self.assertEqual(MARIADB.setGtidStart(True), ["SET GLOBAL gtid_binlog_state = %s",
                                                      "SET GLOBAL gtid_slave_pos = %s"])
        self.assertEqual(MYSQL.setGtidStart(True), ["RESET MASTER", "SET GLOBAL gtid_purged = %s"])

    def test_options(self) -> None:
        self.assertEqual(MARIADB.masterOptions(3, "mysql-bin"), {
            "server_id": "3", "log_bin": "mysql-bin", "binlog_format": "ROW",
            "log_slave_updates": "ON", "read_only": "OFF", "gtid_strict_mode": "ON"})
        slave = MYSQL.slaveOptions(4, "binlog", "relay")
        self.assertEqual(slave["gtid_mode"], "ON")
        self.assertEqual(slave["enforce_gtid_consistency"], "ON")
        self.assertEqual(slave["super_read_only"], "ON")
        self.assertEqual(slave["read_only"], "ON")
        self.assertEqual(slave["relay_log"], "relay")
        self.assertIn("gtid_mode", MYSQL.restartOptions())
        self.assertNotIn("server_id", MARIADB.restartOptions())

    def test_dump_options(self) -> None:
        self.assertIn("--single-transaction", MARIADB.dumpOptions())
        self.assertIn("--gtid", MARIADB.dumpOptions())
        self.assertIn("--master-data=2", MARIADB.dumpOptions())
        self.assertIn("--source-data=2", MYSQL.dumpOptions())
        self.assertIn("--set-gtid-purged=COMMENTED", MYSQL.dumpOptions())
        self.assertNotIn("--lock-all-tables", MYSQL.dumpOptions())


class ValidationTests(SynchronousTestCase):
    def test_hostile_values_refused(self) -> None:
        for dialect in (MARIADB, MYSQL):
            for host in ("h', MASTER_USER='root", "a b", "", "h;DROP", "x" * 300):
                self.assertRaises(InvalidParams, dialect.changeSource, host, 1, "'u'", "'p'")
            for literal in ("'a'b'", "'a\\'", "a", "'a', MASTER_HOST='x'", "'p'; DROP --"):
                self.assertRaises(InvalidParams, dialect.changeSource, "h", 1, literal, "'p'")
                self.assertRaises(InvalidParams, dialect.changeSource, "h", 1, "'u'", literal)
            for port in (0, 65536, True, "3306"):
                self.assertRaises(InvalidParams, dialect.changeSource, "h", port, "'u'", "'p'")
            self.assertRaises(InvalidParams, dialect.changeSource, "h", 1, "'u'", "'p'",
                              logFile="f', MASTER_HOST='x", logPos=4)
            self.assertRaises(InvalidParams, dialect.changeSource, "h", 1, "'u'", "'p'",
                              logFile="f.000001", logPos=3)
        for user in ("root", "a'b", ".x", "", "a" * 81, "mariadb.sys"):
            self.assertRaises(InvalidParams, checkReplUser, user)
        self.assertEqual(checkReplUser("conpaassql_repl"), "conpaassql_repl")
        self.assertEqual(checkMasterHost("::1"), "::1")
        for pos in ("0-1-5", "0-1-5,1-2-9", "", "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5"):
            self.assertEqual(checkGtidPos(pos), pos)
        for pos in ("0-1-5'", "0-1", "x", "0-1-5; DROP"):
            self.assertRaises(InvalidParams, checkGtidPos, pos)

    def test_quoted_literal(self) -> None:
        self.assertTrue(isQuotedLiteral("'it\\'s \\\\ \"x\"'"))
        self.assertTrue(isQuotedLiteral("''"))
        self.assertFalse(isQuotedLiteral("'it's'"))
        self.assertFalse(isQuotedLiteral("'a\\'"))

    @given(st.text(max_size=40))
    def test_quote_like_the_server(self, value: str) -> None:
        # QUOTE() escapes backslash and quote with a backslash (and NUL, ^Z).
        quoted = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        self.assertTrue(isQuotedLiteral(quoted))


DUMP = (
    b"/*M!999999\\- enable the sandbox mode */ \n-- MariaDB dump 10.19\n"
    b"-- CHANGE MASTER TO MASTER_USE_GTID=slave_pos;\n"
    b"-- CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000001', MASTER_LOG_POS=1136;\n"
    b"INSERT INTO t VALUES (1,'-- SET GLOBAL gtid_slave_pos=''9-9-9'';');\n" * 3
    + b"-- SET GLOBAL gtid_slave_pos='0-1-5';\n-- Dump completed on 2026-11-25\n"
)


def _stream() -> bytes:
    return DUMP + trailer(len(DUMP), dumpCoordinates(DUMP[:100], DUMP[-300:]))


class ScannerTests(SynchronousTestCase):
    def test_dump_coordinates(self) -> None:
        found = dumpCoordinates(DUMP[:300], DUMP[-300:])
        self.assertEqual((found.gtid, found.logFile, found.logPos),
                         ("0-1-5", "mysql-bin.000001", 1136))
        mysql = dumpCoordinates(
            b"SET @@SESSION.SQL_LOG_BIN= 0;\n/* SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ "
            b"'3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,\n"
            b"4e11fa47-71ca-11e1-9e33-c80aa9429562:1-2'; */\n"
            b"-- CHANGE REPLICATION SOURCE TO SOURCE_LOG_FILE='binlog.000002', "
            b"SOURCE_LOG_POS=157;\n", b"")
        self.assertEqual(mysql.gtid, "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,"
                                     "4e11fa47-71ca-11e1-9e33-c80aa9429562:1-2")
        self.assertEqual((mysql.logFile, mysql.logPos), ("binlog.000002", 157))
        self.assertIsNone(dumpCoordinates(b"-- nothing\n", b"").gtid)

    @given(st.lists(st.integers(min_value=0, max_value=len(_stream())), max_size=12))
    def test_trailer_across_chunks(self, cuts: list[int]) -> None:
        data = _stream()
        result = SeedResult()
        scanner = _Scanner(result)
        points = [0, *sorted(cuts), len(data)]
        for a, b in itertools.pairwise(points):
            result.bytes += b - a
            scanner.feed(data[a:b])
        self.assertTrue(scanner.finish())
        self.assertEqual(result.gtid, "0-1-5")
        self.assertEqual(result.logFile, "mysql-bin.000001")
        self.assertEqual(result.logPos, 1136)

    def test_incomplete(self) -> None:
        for data in (DUMP, DUMP + trailer(5, SeedResult(gtid="0-1-5")), _stream()[:-3]):
            result = SeedResult(bytes=len(data))
            scanner = _Scanner(result)
            scanner.feed(data)
            self.assertFalse(scanner.finish(), data[-40:])

    def test_master_failure_reason(self) -> None:
        result = SeedResult()
        scanner = _Scanner(result)
        scanner.feed(DUMP[:200])
        scanner.feed(b"\n-- conpaassql snapshot failed: Couldn't execute 'SHOW FIELDS'\n")
        self.assertFalse(scanner.finish())
        self.assertEqual(result.failure, "Couldn't execute 'SHOW FIELDS'")
