"""
The agent's configuration file.

An INI file read once into frozen dataclasses.  The section and key names of
the original conpaassql are kept::

    [MySQL_root_connection]
    # Used in script mode only: how to reach the node's own server as root.
    location =            ; host; empty = this node (unix socket or 127.0.0.1)
    username = root
    password = secret

    [MySQL_configuration]
    my_cnf_file = /etc/mysql/mariadb.conf.d/50-server.cnf
    path_mysql_ssr = /etc/init.d/mariadb   ; called as: path start|stop|restart

    [agent]
    mode = managed        ; managed (default) or script
    mysqld = /usr/sbin/mariadbd
    install_db = /usr/bin/mariadb-install-db
    client = /usr/bin/mariadb
    dump = /usr/bin/mariadb-dump
    mysqld_port = 0       ; 0: pick a free port at first start and keep it
    bind_address = 127.0.0.1
    datadir_template =    ; a pristine data directory to copy instead of initialising

In I{managed} mode (the default) the agent runs a private server of its own
(see L{conpaassql.agent.mysqld.ManagedServer}) and the
C{[MySQL_root_connection]} section is not used: the root password is
generated.  In I{script} mode the agent drives a server installed on the
node through C{path_mysql_ssr}; that mode is implied when C{path_mysql_ssr}
is set and C{mode} is not.

Binaries left unset are looked up in C{PATH} plus C{/usr/sbin} and
C{/usr/local/sbin}, the MariaDB name first (C{mariadbd}, then C{mysqld}).

Every problem in the file is collected and reported together in one
L{ConfigError}; unknown sections and keys are problems.  No file at all
(C{load_config(None)}) means all defaults; a named file must exist.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from conpaassql.agent.mycnf import validate_host
from conpaassql.common.config import ConfigError, ConfigProblem, readConfigText, readIni

__all__ = [
    "EXTRA_BINARY_DIRS",
    "AgentConfig",
    "ConfigError",
    "ConfigProblem",
    "MySQLConfiguration",
    "RootConnection",
    "ServerSettings",
    "find_binary",
    "load_config",
    "parse_config",
]

Mode = Literal["managed", "script"]

#: Directories searched for binaries in addition to C{PATH}.
EXTRA_BINARY_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/local/sbin")

_DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "mysqld": ("mariadbd", "mysqld"),
    "install_db": ("mariadb-install-db", "mysql_install_db"),
    "client": ("mariadb", "mysql"),
    "dump": ("mariadb-dump", "mysqldump"),
}


@dataclass(frozen=True)
class RootConnection:
    """
    C{[MySQL_root_connection]}: the root account of a node-installed server
    (script mode).  C{location} empty means this node.
    """

    location: str = ""
    username: str = "root"
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class MySQLConfiguration:
    """
    C{[MySQL_configuration]}: the node-installed server's option file and
    its start/stop script (script mode).
    """

    my_cnf_file: str | None = None
    path_mysql_ssr: str | None = None


@dataclass(frozen=True)
class ServerSettings:
    """
    C{[agent]}: how the database server is run.  Binary paths are absolute,
    or L{None} when not found (L{parse_config} looks them up; a
    C{ServerSettings} built in code may leave them L{None}, and
    L{with_binaries_found} fills them in).
    """

    mode: Mode = "managed"
    mysqld: str | None = None
    install_db: str | None = None
    client: str | None = None
    dump: str | None = None
    mysqld_port: int = 0
    bind_address: str = "127.0.0.1"
    #: A template data directory made by L{conpaassql.agent.template}: a
    #: new instance copies it instead of running C{mariadb-install-db}
    #: (managed mode; an unusable template falls back to that).
    datadir_template: str | None = None

    def with_binaries_found(
        self, search_path: str | None = None, extra_dirs: Sequence[str] = EXTRA_BINARY_DIRS
    ) -> ServerSettings:
        """
        Return a copy where every binary left L{None} is looked up by its
        default names (see L{find_binary}); it stays L{None} if not found.
        """

        def get(key: str) -> str | None:
            given: str | None = getattr(self, key)
            if given is not None:
                return given
            return find_binary(_DEFAULT_NAMES[key], search_path, extra_dirs)

        return replace(
            self,
            mysqld=get("mysqld"),
            install_db=get("install_db"),
            client=get("client"),
            dump=get("dump"),
        )


@dataclass(frozen=True)
class AgentConfig:
    """
    The whole agent configuration.
    """

    root: RootConnection = field(default_factory=RootConnection)
    mysql: MySQLConfiguration = field(default_factory=MySQLConfiguration)
    server: ServerSettings = field(default_factory=ServerSettings)


def find_binary(
    names: Sequence[str],
    search_path: str | None = None,
    extra_dirs: Sequence[str] = EXTRA_BINARY_DIRS,
) -> str | None:
    """
    Find the first of C{names} that is an executable file in C{search_path}
    (default: C{$PATH}) or C{extra_dirs}.

    @return: its absolute path, or L{None}.
    """
    if search_path is None:
        search_path = os.environ.get("PATH", os.defpath)
    directories = [d for d in search_path.split(os.pathsep) if d] + list(extra_dirs)
    joined = os.pathsep.join(directories)
    for name in names:
        found = shutil.which(name, path=joined)
        if found is not None:
            return os.path.abspath(found)
    return None


_SCHEMA: dict[str, tuple[str, ...]] = {
    "MySQL_root_connection": ("location", "username", "password"),
    "MySQL_configuration": ("my_cnf_file", "path_mysql_ssr"),
    "agent": (
        "mode",
        "mysqld",
        "install_db",
        "client",
        "dump",
        "mysqld_port",
        "bind_address",
        "datadir_template",
    ),
}


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def parse_config(
    text: str,
    source: str = "<config>",
    search_path: str | None = None,
    extra_dirs: Sequence[str] = EXTRA_BINARY_DIRS,
) -> AgentConfig:
    """
    Parse the text of an agent configuration file.

    @param source: the file name, used in error messages.
    @param search_path: where to look for binaries (default C{$PATH}), in
        addition to C{extra_dirs}.
    @raise ConfigError: listing every problem found.
    """
    parser, problems = readIni(text, source, _SCHEMA)

    def problem(section: str | None, key: str | None, message: str) -> None:
        problems.append(ConfigProblem(section, key, message))

    values: dict[tuple[str, str], str] = {}
    for section in parser.sections():
        if section not in _SCHEMA:
            continue
        for key, value in parser.items(section, raw=True):
            if key in parser.defaults():
                continue
            if key not in _SCHEMA[section]:
                problem(section, key, "unknown key; known: " + ", ".join(_SCHEMA[section]))
                continue
            if "\0" in value or "\n" in value or "\r" in value:
                problem(section, key, "line breaks and NUL are not allowed")
                continue
            values[section, key] = value.strip()

    def get(section: str, key: str) -> str | None:
        return values.get((section, key))

    # [MySQL_root_connection]
    location = get("MySQL_root_connection", "location") or ""
    if location:
        try:
            location = validate_host(location)
        except ValueError as e:
            problem("MySQL_root_connection", "location", f"{e} (or empty for this node)")
    username = get("MySQL_root_connection", "username")
    if username is None:
        username = "root"
    elif not username or len(username) > 80:
        problem("MySQL_root_connection", "username", "must be 1 to 80 characters")
    password = get("MySQL_root_connection", "password") or ""

    # [MySQL_configuration]
    my_cnf_file = get("MySQL_configuration", "my_cnf_file") or None
    if my_cnf_file is not None and not os.path.isabs(my_cnf_file):
        problem("MySQL_configuration", "my_cnf_file", "must be an absolute path")
    ssr = get("MySQL_configuration", "path_mysql_ssr") or None
    if ssr is not None:
        if not os.path.isabs(ssr):
            problem("MySQL_configuration", "path_mysql_ssr", "must be an absolute path")
        elif not _is_executable_file(ssr):
            problem("MySQL_configuration", "path_mysql_ssr", f"{ssr} is not an executable file")

    # [agent]
    mode_text = get("agent", "mode")
    mode: Mode
    if mode_text is None or mode_text == "":
        mode = "script" if ssr is not None else "managed"
    elif mode_text in ("managed", "script"):
        mode = mode_text  # type: ignore[assignment]
    else:
        problem("agent", "mode", "must be 'managed' or 'script'")
        mode = "managed"
    if mode == "script" and ssr is None:
        problem("MySQL_configuration", "path_mysql_ssr", "is required in script mode")

    binaries: dict[str, str | None] = {}
    for key, names in _DEFAULT_NAMES.items():
        given = get("agent", key)
        if not given:
            binaries[key] = find_binary(names, search_path, extra_dirs)
        elif "/" in given:
            if not os.path.isabs(given):
                problem("agent", key, "must be an absolute path or a bare program name")
                binaries[key] = None
            elif not _is_executable_file(given):
                problem("agent", key, f"{given} is not an executable file")
                binaries[key] = None
            else:
                binaries[key] = given
        else:
            binaries[key] = find_binary([given], search_path, extra_dirs)
            if binaries[key] is None:
                problem(
                    "agent", key, f"{given} not found in PATH or {', '.join(EXTRA_BINARY_DIRS)}"
                )
    if mode == "managed" and binaries["mysqld"] is None and not get("agent", "mysqld"):
        problem("agent", "mysqld", "no mariadbd or mysqld found; managed mode needs one")

    port_text = get("agent", "mysqld_port")
    port = 0
    if port_text:
        if port_text.isascii() and port_text.isdigit() and 0 <= int(port_text) <= 65535:
            port = int(port_text)
        else:
            problem(
                "agent", "mysqld_port", "must be an integer from 0 to 65535 (0: pick a free port)"
            )

    bind_address = get("agent", "bind_address") or "127.0.0.1"
    try:
        bind_address = validate_host(bind_address)
    except ValueError as e:
        problem("agent", "bind_address", str(e))

    datadir_template = get("agent", "datadir_template") or None
    if datadir_template is not None and not os.path.isabs(datadir_template):
        problem("agent", "datadir_template", "must be an absolute path")

    if problems:
        raise ConfigError(source, problems)
    return AgentConfig(
        root=RootConnection(location=location, username=username, password=password),
        mysql=MySQLConfiguration(my_cnf_file=my_cnf_file, path_mysql_ssr=ssr),
        server=ServerSettings(
            mode=mode,
            mysqld=binaries["mysqld"],
            install_db=binaries["install_db"],
            client=binaries["client"],
            dump=binaries["dump"],
            mysqld_port=port,
            bind_address=bind_address,
            datadir_template=datadir_template,
        ),
    )


def load_config(path: str | None, search_path: str | None = None) -> AgentConfig:
    """
    Read the agent configuration file.

    @param path: the file; L{None} means no file: all defaults.
    @raise ConfigError: listing every problem found (a missing or
        unreadable file is one problem).
    """
    if path is None:
        return parse_config("", "<defaults>", search_path)
    return parse_config(readConfigText(path), path, search_path)
