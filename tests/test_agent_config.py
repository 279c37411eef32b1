"""
Unit tests for the agent's configuration file, the my.cnf editor and the
secret file helpers.
"""

from __future__ import annotations

import os
import stat
import subprocess
from typing import ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from conpaassql.agent import mycnf
from conpaassql.agent.config import (
    AgentConfig,
    ConfigError,
    ServerSettings,
    find_binary,
    load_config,
    parse_config,
)
from conpaassql.common.files import read_or_create_token, write_file_atomic, write_secret_file


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class FilesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def test_write_secret_file(self) -> None:
        """
        The file has the content, mode 0600, and no temporary file is left.
        """
        path = os.path.join(self.dir, "secret")
        write_secret_file(path, "hunter2\n")
        with open(path) as f:
            self.assertEqual(f.read(), "hunter2\n")
        self.assertEqual(_mode(path), 0o600)
        self.assertEqual(os.listdir(self.dir), ["secret"])

    def test_write_secret_file_replaces_and_tightens(self) -> None:
        """
        An existing world-readable file is replaced by a 0600 one.
        """
        path = os.path.join(self.dir, "secret")
        with open(path, "w") as f:
            f.write("old")
        os.chmod(path, 0o644)
        write_secret_file(path, b"new")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertEqual(_mode(path), 0o600)

    def test_write_file_atomic_keeps_mode(self) -> None:
        """
        Without a mode, an existing file keeps its mode.
        """
        path = os.path.join(self.dir, "my.cnf")
        with open(path, "w") as f:
            f.write("old")
        os.chmod(path, 0o640)
        write_file_atomic(path, "new")
        self.assertEqual(_mode(path), 0o640)
        write_file_atomic(os.path.join(self.dir, "fresh"), "x")
        self.assertEqual(_mode(os.path.join(self.dir, "fresh")), 0o644)

    def test_write_failure_leaves_target(self) -> None:
        """
        If the rename fails, the target is unchanged and the temporary file
        is gone.
        """
        target = os.path.join(self.dir, "adir")
        os.makedirs(os.path.join(target, "inside"))
        self.assertRaises(OSError, write_secret_file, target, "x")
        self.assertEqual(sorted(os.listdir(self.dir)), ["adir"])

    def test_read_or_create_token(self) -> None:
        """
        The first call creates the directory (0700) and the file (0600);
        the second returns the same token.
        """
        path = os.path.join(self.dir, "sub", "token")
        token = read_or_create_token(path)
        self.assertGreaterEqual(len(token), 40)
        self.assertEqual(_mode(os.path.dirname(path)), 0o700)
        self.assertEqual(_mode(path), 0o600)
        self.assertEqual(read_or_create_token(path), token)

    def test_read_token_strips(self) -> None:
        path = os.path.join(self.dir, "token")
        with open(path, "w") as f:
            f.write("  abc \n")
        self.assertEqual(read_or_create_token(path), "abc")

    def test_empty_token_refused(self) -> None:
        path = os.path.join(self.dir, "token")
        open(path, "w").close()
        self.assertRaises(ValueError, read_or_create_token, path)


class ConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.bin = os.path.join(self.dir, "bin")
        os.makedirs(self.bin)
        for name in ("mariadbd", "mariadb-install-db", "mariadb", "mariadb-dump", "ssr"):
            path = os.path.join(self.bin, name)
            with open(path, "w") as f:
                f.write("#!/bin/sh\n")
            os.chmod(path, 0o755)
        self.script = os.path.join(self.bin, "ssr")

    def parse(self, text: str) -> AgentConfig:
        return parse_config(text, "agent.ini", search_path=self.bin)

    def problems(self, text: str) -> list[str]:
        error = self.assertRaises(ConfigError, self.parse, text)
        return [str(problem) for problem in error.problems]

    def test_datadir_template(self) -> None:
        """
        [agent] datadir_template: an absolute path; none by default.  The
        agent's --datadir-template overrides it.
        """
        from twisted.python import usage

        from conpaassql.agent.tap import Options

        self.assertIsNone(self.parse("").server.datadir_template)
        config = self.parse("[agent]\ndatadir_template = /var/tmpl/mariadb-1\n")
        self.assertEqual(config.server.datadir_template, "/var/tmpl/mariadb-1")
        self.assertEqual(self.problems("[agent]\ndatadir_template = tmpl\n"),
                         ["[agent] datadir_template: must be an absolute path"])
        options = Options()
        options.parseOptions(["--state-dir", self.dir, "--datadir-template", "/t/mariadb-2"])
        self.assertEqual(options["parsed-config"].server.datadir_template, "/t/mariadb-2")
        self.assertRaises(usage.UsageError, Options().parseOptions,
                          ["--state-dir", self.dir, "--datadir-template", "t"])

    def test_defaults(self) -> None:
        """
        No file at all: managed mode, port 0, 127.0.0.1, binaries found.
        """
        config = load_config(None, search_path=self.bin)
        self.assertEqual(config.server.mode, "managed")
        self.assertEqual(config.server.mysqld_port, 0)
        self.assertEqual(config.server.bind_address, "127.0.0.1")
        # The fake binaries in self.bin come first.
        self.assertEqual(config.server.mysqld, os.path.join(self.bin, "mariadbd"))
        self.assertEqual(config.server.dump, os.path.join(self.bin, "mariadb-dump"))
        self.assertEqual(config.root.username, "root")
        self.assertIsNone(config.mysql.path_mysql_ssr)

    def test_with_binaries_found(self) -> None:
        """
        Settings built in code get their unset binaries looked up; set ones
        are kept.
        """
        settings = ServerSettings(client="/opt/my/mariadb").with_binaries_found(self.bin, ())
        self.assertEqual(settings.client, "/opt/my/mariadb")
        self.assertEqual(settings.mysqld, os.path.join(self.bin, "mariadbd"))
        self.assertEqual(settings.install_db, os.path.join(self.bin, "mariadb-install-db"))
        empty = ServerSettings().with_binaries_found(os.path.join(self.dir, "nowhere"), ())
        self.assertIsNone(empty.mysqld)

    def test_missing_named_file(self) -> None:
        """
        A named file that does not exist is an error, not silent defaults.
        """
        error = self.assertRaises(
            ConfigError, load_config, os.path.join(self.dir, "nope.ini"), self.bin
        )
        self.assertIn("cannot read", str(error))

    def test_full_file(self) -> None:
        path = os.path.join(self.dir, "agent.ini")
        with open(path, "w") as f:
            f.write(
                "[MySQL_root_connection]\n"
                "location = 10.0.0.5\n"
                "username = admin\n"
                "password = p%ss;word\n"
                "[MySQL_configuration]\n"
                "my_cnf_file = /etc/mysql/my.cnf\n"
                f"path_mysql_ssr = {self.script}\n"
                "[agent]\n"
                "mode = managed\n"
                "mysqld = mariadbd\n"
                "mysqld_port = 3307\n"
                "bind_address = ::1\n"
            )
        config = load_config(path, search_path=self.bin)
        self.assertEqual(config.root.location, "10.0.0.5")
        self.assertEqual(config.root.username, "admin")
        self.assertEqual(config.root.password, "p%ss;word")
        self.assertEqual(config.mysql.my_cnf_file, "/etc/mysql/my.cnf")
        self.assertEqual(config.server.mode, "managed")
        self.assertEqual(config.server.mysqld_port, 3307)
        self.assertEqual(config.server.bind_address, "::1")
        self.assertNotIn("p%ss", repr(config))

    def test_script_mode_implied(self) -> None:
        config = self.parse(f"[MySQL_configuration]\npath_mysql_ssr = {self.script}\n")
        self.assertEqual(config.server.mode, "script")
        self.assertEqual(config.mysql.path_mysql_ssr, self.script)

    def test_script_mode_needs_script(self) -> None:
        self.assertEqual(
            self.problems("[agent]\nmode = script\n"),
            ["[MySQL_configuration] path_mysql_ssr: is required in script mode"],
        )

    def test_all_problems_reported(self) -> None:
        """
        Every problem is reported at once, with section and key.
        """
        problems = self.problems(
            "[agent]\n"
            "mode = turbo\n"
            "mysqld_port = 70000\n"
            "bind_address = not an address\n"
            "colour = blue\n"
            "[MySQL_configuration]\n"
            "path_mysql_ssr = relative/ssr\n"
            "[supervisor]\n"
            "x = 1\n"
        )
        text = "\n".join(problems)
        self.assertEqual(len(problems), 6, text)
        for fragment in (
            "[agent] mode:",
            "[agent] mysqld_port:",
            "[agent] bind_address:",
            "[agent] colour: unknown key",
            "[MySQL_configuration] path_mysql_ssr: must be an absolute path",
            "[supervisor]: unknown section",
        ):
            self.assertIn(fragment, text)

    def test_missing_executables(self) -> None:
        problems = self.problems(
            f"[agent]\nmysqld = {self.dir}/nope\nclient = no-such-client\n"
            f"[MySQL_configuration]\npath_mysql_ssr = {self.dir}/nope.sh\n"
            "[MySQL_root_connection]\nlocation = bad_host!\n"
        )
        self.assertEqual(len(problems), 4, problems)

    def test_managed_needs_server_binary(self) -> None:
        empty = os.path.join(self.dir, "empty")
        os.makedirs(empty)
        error = self.assertRaises(ConfigError, parse_config, "", "x", empty, ())
        self.assertIn("managed mode needs one", str(error))
        # Script mode does not.
        config = parse_config(
            f"[MySQL_configuration]\npath_mysql_ssr = {self.script}\n", "x", empty, ()
        )
        self.assertIsNone(config.server.mysqld)

    def test_syntax_error(self) -> None:
        problems = self.problems("[agent]\nmode = managed\nmode = script\n")
        self.assertEqual(len(problems), 1)
        self.assertIn("cannot parse", problems[0])

    def test_default_section_refused(self) -> None:
        problems = self.problems("[DEFAULT]\nmode = managed\n")
        self.assertIn("DEFAULT", problems[0])


class MyCnfParserTests(SynchronousTestCase):
    SAMPLE = (
        "# The MariaDB configuration file\n"
        "!include /etc/mysql/common.cnf\n"
        "\n"
        "[client-server]\n"
        "socket = /run/mysqld/mysqld.sock\n"
        "\n"
        "[mysqld]\n"
        "user            = mysql\n"
        "bind-address    = 127.0.0.1   # only local\n"
        "skip-external-locking\n"
        'character-set-server  = "utf8mb4"\n'
        "; a comment\n"
        "\n"
        "[mysqldump]\n"
        "quick\n"
        "!includedir /etc/mysql/conf.d/"
    )

    def test_round_trip(self) -> None:
        """
        Rendering an unchanged file gives the same bytes back.
        """
        self.assertEqual(mycnf.MyCnf.parse(self.SAMPLE).render(), self.SAMPLE)

    def test_read_values(self) -> None:
        cnf = mycnf.MyCnf.parse(self.SAMPLE)
        self.assertEqual(cnf.get("mysqld", "bind_address"), "127.0.0.1")
        self.assertEqual(cnf.get("mysqld", "character_set_server"), "utf8mb4")
        self.assertEqual(cnf.get("mysqld", "skip_external_locking"), "")
        self.assertIsNone(cnf.get("mysqld", "port"))
        self.assertEqual(cnf.get("client-server", "socket"), "/run/mysqld/mysqld.sock")
        self.assertEqual(cnf.sections(), ["client-server", "mysqld", "mysqldump"])

    def test_set_existing(self) -> None:
        """
        Setting an option replaces its line (whatever the spelling) and
        keeps everything else, includes included.
        """
        cnf = mycnf.MyCnf.parse(self.SAMPLE)
        cnf.set("mysqld", "bind-address", "0.0.0.0")
        text = cnf.render()
        self.assertIn("bind-address=0.0.0.0\n", text)
        self.assertNotIn("127.0.0.1", text)
        self.assertEqual(
            text,
            self.SAMPLE.replace(
                "bind-address    = 127.0.0.1   # only local", "bind-address=0.0.0.0"
            ),
        )

    def test_set_new_in_section(self) -> None:
        """
        A new option goes after the section's last option, before trailing
        comments and blank lines.
        """
        cnf = mycnf.MyCnf.parse(self.SAMPLE)
        cnf.set("mysqld", "max_connections", "77")
        lines = cnf.render().splitlines()
        index = lines.index("max_connections=77")
        self.assertEqual(lines[index - 1], 'character-set-server  = "utf8mb4"')
        self.assertEqual(lines[index + 1], "; a comment")
        self.assertIn("!includedir /etc/mysql/conf.d/", lines)

    def test_set_new_section(self) -> None:
        cnf = mycnf.MyCnf.parse("!includedir /etc/mysql/conf.d/")
        cnf.set("mysqld", "port", "3307")
        self.assertEqual(cnf.render(), "!includedir /etc/mysql/conf.d/\n\n[mysqld]\nport=3307\n")

    def test_duplicates_collapse(self) -> None:
        """
        The last occurrence wins when reading; setting leaves one line.
        """
        cnf = mycnf.MyCnf.parse("[mysqld]\nport=1\n[client]\nport=9\n[mysqld]\nport=2\n")
        self.assertEqual(cnf.get("mysqld", "port"), "2")
        cnf.set("mysqld", "port", "3")
        self.assertEqual(cnf.render(), "[mysqld]\n[client]\nport=9\n[mysqld]\nport=3\n")

    def test_last_line_without_newline(self) -> None:
        cnf = mycnf.MyCnf.parse("[mysqld]\nport=1")
        cnf.set("mysqld", "max_connections", "5")
        self.assertEqual(cnf.render(), "[mysqld]\nport=1\nmax_connections=5\n")

    def test_only_newline_ends_a_line(self) -> None:
        """
        Like the server, only "\\n" ends a line: a vertical tab or U+2028
        does not start a new option.
        """
        cnf = mycnf.MyCnf.parse("[mysqld]\nport=1\x0bskip-grant-tables\u2028x=1\n")
        self.assertEqual(list(cnf.items("mysqld")), ["port"])

    def test_crlf_kept(self) -> None:
        cnf = mycnf.MyCnf.parse("[mysqld]\r\nport=1\r\n")
        cnf.set("mysqld", "port", "2")
        self.assertEqual(cnf.render(), "[mysqld]\r\nport=2\r\n")

    def test_remove(self) -> None:
        cnf = mycnf.MyCnf.parse("[mysqld]\nport=1\nsocket=/x\n")
        self.assertTrue(cnf.remove("mysqld", "port"))
        self.assertFalse(cnf.remove("mysqld", "port"))
        self.assertEqual(cnf.render(), "[mysqld]\nsocket=/x\n")

    def test_quoting(self) -> None:
        """
        Values that need it are quoted so that the server's own reader
        (my_print_defaults) reads back exactly the value.
        """
        values = ['a b#c\\d"e', "semi;colon", "  spaced  ", "'single'", "tab\there", "plain"]
        cnf = mycnf.MyCnf.parse("")
        for index, value in enumerate(values):
            cnf.set("client", f"v{index}", value)
        reparsed = mycnf.MyCnf.parse(cnf.render())
        for index, value in enumerate(values):
            self.assertEqual(reparsed.get("client", f"v{index}"), value)
        tool = find_binary(["my_print_defaults", "mariadb-print-defaults"])
        if tool is None:
            return
        path = os.path.join(self.mktemp())
        with open(path, "w") as f:
            f.write(cnf.render())
        out = subprocess.run(
            [tool, f"--defaults-file={path}", "client"], capture_output=True, check=True, text=True
        ).stdout.splitlines()
        self.assertEqual(out, [f"--v{i}={v}" for i, v in enumerate(values)])

    def test_quote_refuses_newline(self) -> None:
        self.assertRaises(ValueError, mycnf.quote_value, "a\nb")
        self.assertRaises(ValueError, mycnf.quote_value, "a\0b")

    @settings(max_examples=200)
    @given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300))
    def test_round_trip_any_text(self, text: str) -> None:
        """
        Whatever the text, parsing and rendering gives it back.
        """
        self.assertEqual(mycnf.MyCnf.parse(text).render(), text)

    @settings(max_examples=200)
    @given(
        st.text(
            alphabet=st.characters(
                blacklist_categories=["Cs"],
                blacklist_characters="\n\r\0\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
            ),
            max_size=50,
        )
    )
    def test_quote_round_trip(self, value: str) -> None:
        """
        Any value without line breaks is read back exactly as set.
        """
        cnf = mycnf.MyCnf.parse("[client]\nx=1\n")
        cnf.set("client", "password", value)
        self.assertEqual(mycnf.MyCnf.parse(cnf.render()).get("client", "password"), value)


class ValidateOptionTests(SynchronousTestCase):
    GOOD: ClassVar[list[tuple[str, object, str]]] = [
        ("port", "3306", "3306"),
        ("port", 3307, "3307"),
        ("bind-address", "0.0.0.0", "0.0.0.0"),
        ("bind_address", "db-1.example.org", "db-1.example.org"),
        ("bind-address", "::1", "::1"),
        ("datadir", "/var/lib/mysql2/", "/var/lib/mysql2"),
        ("max_connections", "77", "77"),
        ("max-connections", 100000, "100000"),
        ("innodb_buffer_pool_size", "128m", "128M"),
        ("innodb_buffer_pool_size", "1G", "1G"),
        ("innodb_buffer_pool_size", "134217728", "134217728"),
        ("max_allowed_packet", "16M", "16M"),
        ("wait_timeout", "600", "600"),
        ("slow_query_log", "on", "ON"),
        ("slow_query_log", "0", "OFF"),
        ("slow_query_log", True, "ON"),
        ("long_query_time", "0.5", "0.5"),
        ("long_query_time", 2, "2"),
        ("character_set_server", "utf8mb4", "utf8mb4"),
        ("collation-server", "utf8mb4_unicode_ci", "utf8mb4_unicode_ci"),
        ("sql_mode", "strict_trans_tables,NO_ZERO_DATE", "STRICT_TRANS_TABLES,NO_ZERO_DATE"),
        ("sql_mode", "", ""),
        ("server_id", "4294967295", "4294967295"),
        ("server-id", 1, "1"),
        ("log_bin", "mysql-bin", "mysql-bin"),
        ("log-bin", "node1.binlog", "node1.binlog"),
        ("binlog_format", "row", "ROW"),
        ("read_only", "1", "ON"),
        ("gtid_domain_id", "7", "7"),
        ("log_slave_updates", "OFF", "OFF"),
        ("relay_log", "relay-bin", "relay-bin"),
        ("gtid_strict_mode", "on", "ON"),
        ("super_read_only", False, "OFF"),
        ("gtid_mode", "on_permissive", "ON_PERMISSIVE"),
        ("enforce-gtid-consistency", "WARN", "WARN"),
    ]

    def test_good_values(self) -> None:
        for key, value, expected in self.GOOD:
            self.assertEqual(mycnf.validate_option(key, value), expected, (key, value))

    def test_every_whitelisted_option_has_a_good_case(self) -> None:
        covered = {mycnf.normalise_key(key) for key, _, _ in self.GOOD}
        self.assertEqual(covered, set(mycnf.WHITELIST))

    def test_hostile_values(self) -> None:
        """
        Values that could break out of the line, the section or the path
        are refused, naming the key.
        """
        hostile = [
            ("port", "3306\nskip-grant-tables"),
            ("port", "0"),
            ("port", "65536"),
            ("port", "-1"),
            ("port", "1_000"),
            ("port", "٣٣٠٦"),
            ("port", 3.5),
            ("bind-address", "127.0.0.1\n[mysqld]"),
            ("bind-address", "host]"),
            ("bind-address", "a=b"),
            ("bind-address", "a b"),
            ("datadir", "relative/path"),
            ("datadir", "/var/lib/../../etc"),
            ("datadir", "/var/lib/mysql\0"),
            ("datadir", "/var/lib/mysql\nskip-grant-tables"),
            ("datadir", "/tmp/x#comment"),
            ("datadir", '/tmp/"quoted"'),
            ("max_connections", "0"),
            ("max_connections", "77; DROP"),
            ("max_connections", True),
            ("innodb_buffer_pool_size", "1M"),
            ("innodb_buffer_pool_size", "12Q"),
            ("max_allowed_packet", "2G"),
            ("slow_query_log", "yes"),
            ("long_query_time", "1e3"),
            ("long_query_time", "-1"),
            ("character_set_server", "utf8]"),
            ("character_set_server", "utf8=x"),
            ("collation_server", "../etc"),
            ("sql_mode", "ANSI;SET"),
            ("sql_mode", "A B"),
            ("server_id", "4294967296"),
            ("log_bin", "../evil"),
            ("log_bin", "/abs/path"),
            ("log_bin", ".hidden"),
            ("binlog_format", "BOTH"),
            ("relay_log", "a\nb"),
            ("gtid_domain_id", None),
        ]
        for key, value in hostile:
            error = self.assertRaises(mycnf.InvalidOption, mycnf.validate_option, key, value)
            self.assertEqual(error.key, key)
            self.assertIsInstance(error, ValueError)
            self.assertTrue(str(error).startswith(f"{key}: "), str(error))

    def test_unknown_options(self) -> None:
        for key in ("socket", "skip-grant-tables", "init_file", "plugin-load", "user", "port\n"):
            error = self.assertRaises(mycnf.InvalidOption, mycnf.validate_option, key, "1")
            self.assertIn("cannot be set" if "\n" not in key else "not an option", error.message)

    def test_message_says_what_is_allowed(self) -> None:
        error = self.assertRaises(mycnf.InvalidOption, mycnf.validate_option, "port", "x")
        self.assertEqual(str(error), "port: an integer from 1 to 65535 is allowed")

    def test_twice_in_two_spellings(self) -> None:
        self.assertRaises(
            mycnf.InvalidOption,
            mycnf.validate_options,
            {"bind-address": "::1", "bind_address": "::1"},
        )

    @given(st.sampled_from(sorted(mycnf.WHITELIST)), st.text(max_size=40))
    def test_validated_values_are_safe(self, key: str, value: str) -> None:
        """
        Whatever is accepted can be written unquoted on one line, and
        validating it again gives the same value.
        """
        try:
            result = mycnf.validate_option(key, value)
        except mycnf.InvalidOption:
            return
        for bad in "\n\r\0#;[]\"'\\= \t":
            self.assertNotIn(bad, result)
        self.assertEqual(mycnf.validate_option(key, result), result)


class SetOptionsTests(SynchronousTestCase):
    ORIGINAL = "!includedir /etc/mysql/conf.d/\n[mysqld]\n# keep me\nport = 3306\n"

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "my.cnf")
        with open(self.path, "w") as f:
            f.write(self.ORIGINAL)
        os.chmod(self.path, 0o640)

    def test_set_options(self) -> None:
        written = mycnf.set_options(self.path, {"port": 3307, "max-connections": "77"})
        self.assertEqual(written, {"port": "3307", "max_connections": "77"})
        with open(self.path) as f:
            self.assertEqual(
                f.read(),
                "!includedir /etc/mysql/conf.d/\n[mysqld]\n# keep me\nport=3307\nmax_connections=77\n",
            )
        self.assertEqual(_mode(self.path), 0o640)
        self.assertEqual(os.listdir(self.dir), ["my.cnf"])

    def test_invalid_leaves_file_unchanged(self) -> None:
        """
        One bad option refuses all, and the file is untouched.
        """
        before = os.stat(self.path)
        self.assertRaises(
            mycnf.InvalidOption,
            mycnf.set_options,
            self.path,
            {"max_connections": "77", "datadir": "/x\n[client]\npassword=x"},
        )
        with open(self.path) as f:
            self.assertEqual(f.read(), self.ORIGINAL)
        self.assertEqual(os.stat(self.path).st_ino, before.st_ino)

    def test_missing_file_created(self) -> None:
        path = os.path.join(self.dir, "new.cnf")
        mycnf.set_options(path, {"server_id": 3})
        with open(path) as f:
            self.assertEqual(f.read(), "[mysqld]\nserver_id=3\n")
