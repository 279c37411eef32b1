"""
C{conpaassql-client}: call the manager's API from a shell.

    conpaassql-client [OPTIONS] HOST PORT COMMAND [ARGS...]
    conpaassql-client [OPTIONS] --url URL COMMAND [ARGS...]
    conpaassql-client [OPTIONS] COMMAND [ARGS...]

The commands keep the names (and aliases) of the original
C{run-manager-client.sh}.  Each one is a row of L{COMMANDS}: its names, an
argument parser (a pure function from the words after the command name to a
L{Request}) and a function printing the result for people; C{--json} prints
the raw result instead.

The work is split in two so that nothing waits on a terminal while the reactor
runs: L{prepare} parses the command line, finds the token and asks for a
password (synchronous, before the reactor starts); L{execute} talks to the
manager.  L{run} does both, for tests.

Exit status: 0 success, 1 error reply (or C{wait_nodes} saw a node in ERROR),
2 usage error, 3 transport error (cannot connect, no reply in time),
4 C{wait_nodes} timed out, 130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass as _getpass
import io
import json
import os
import re
import signal
import stat
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn, Protocol, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react

from conpaassql.common.tls import ClientTLS, TLSFileError, readCertificate
from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.errors import UNAUTHORIZED, NotFound, RPCError, TransportError

PROG = "conpaassql-client"
DEFAULT_URL = "http://127.0.0.1:50000/"
DEFAULT_TIMEOUT = 30.0
DEFAULT_WAIT = 600.0
TOKEN_ENV = "CONPAASSQL_TOKEN"
URL_ENV = "CONPAASSQL_URL"
#: Where the manager keeps its token when run from a checkout (tools/) and by default.
DEFAULT_TOKEN_FILES = (
    os.path.join(".state", "manager", "api-token"),
    os.path.join("~", ".local", "state", "conpaassql", "manager", "api-token"),
)
#: The file field of a dump upload, as in the original.
DUMP_FIELD = "mysqldump"

EXIT_OK = 0
EXIT_ERROR_REPLY = 1
EXIT_USAGE = 2
EXIT_TRANSPORT = 3
EXIT_WAIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130

#: Node states in which C{wait_nodes} stops waiting for a node.
SETTLED = ("RUNNING", "ERROR")


class UsageError(Exception):
    """The command line is wrong; the message says how."""


# ---------------------------------------------------------------------------
# Commands: argv words -> Request (pure)


@dataclass(frozen=True)
class Request:
    """
    What one command line asks of the manager.

    @ivar method: the manager method, or L{None} for a procedure of the client
        itself (C{wait_nodes}, whose C{params} are its own settings).
    @ivar upload: the path of a file to send as the C{mysqldump} field of a
        multipart upload, or L{None} for a plain call.
    @ivar askPassword: C{params["password"]} is still to be read (from the
        terminal, or from stdin with C{--password-stdin}).
    """

    method: str | None
    params: dict[str, Any] | list[Any] = field(default_factory=dict)
    upload: str | None = None
    askPassword: bool = False


Parser = Callable[[Sequence[str]], Request]
Shower = Callable[[Any, Request, TextIO], None]


@dataclass(frozen=True)
class Command:
    names: tuple[str, ...]
    synopsis: str
    summary: str
    parse: Parser
    show: Shower


def _arity(args: Sequence[str], least: int, most: int) -> None:
    if len(args) < least:
        raise UsageError("missing argument" + ("s" if least - len(args) > 1 else ""))
    if len(args) > most:
        raise UsageError(f"unexpected argument {args[most]!r}")


def _nodeId(word: str) -> int:
    if not re.fullmatch(r"[0-9]{1,18}", word):
        raise UsageError(f"a node id is a number, not {word!r}")
    return int(word)


def _target(word: str) -> int | str:
    """A node id, or C{all}."""
    if word == "all":
        return "all"
    if not re.fullmatch(r"[0-9]{1,18}", word):
        raise UsageError(f"expected a node id or 'all', not {word!r}")
    return int(word)


def _count(word: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", word) or int(word) < 1:
        raise UsageError(f"a node count is a positive number, not {word!r}")
    return int(word)


def _user(word: str) -> str:
    if not word:
        raise UsageError("a user name must not be empty")
    return word


def _positive(word: str, what: str) -> float:
    try:
        value = float(word)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{what} is a positive number of seconds, not {word!r}")
    return value


def _noArgs(method: str) -> Parser:
    def parse(args: Sequence[str]) -> Request:
        _arity(args, 0, 0)
        return Request(method)

    return parse


def _oneNode(method: str, param: str) -> Parser:
    def parse(args: Sequence[str]) -> Request:
        _arity(args, 1, 1)
        return Request(method, {param: _nodeId(args[0])})

    return parse


def _parseAddNodes(args: Sequence[str]) -> Request:
    """C{[agent] [N]}, or C{N}: the original's C{add_node agent} and C{add_nodes N}."""
    _arity(args, 0, 2)
    params: dict[str, Any] = {"function": "agent"}
    rest = list(args)
    if rest and not rest[0].isdigit():
        function = rest.pop(0)
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", function):
            raise UsageError(f"expected a node function such as 'agent', not {function!r}")
        params["function"] = function
    if rest:
        params["count"] = _count(rest.pop(0))
    if rest:
        raise UsageError(f"unexpected argument {rest[0]!r}")
    return Request("add_nodes", params)


def _parseConfigureUser(args: Sequence[str]) -> Request:
    _arity(args, 2, 3)
    params: dict[str, Any] = {"serviceNodeId": _target(args[0]), "username": _user(args[1])}
    if len(args) == 3:
        params["password"] = args[2]
        return Request("configure_user", params)
    return Request("configure_user", params, askPassword=True)


def _parseGetUsers(args: Sequence[str]) -> Request:
    _arity(args, 0, 1)
    return Request("get_users", {"serviceNodeId": _target(args[0]) if args else "all"})


def _parseDeleteUser(args: Sequence[str]) -> Request:
    _arity(args, 2, 2)
    return Request("delete_user", {"serviceNodeId": _target(args[0]), "username": _user(args[1])})


def _parseSendDump(args: Sequence[str]) -> Request:
    _arity(args, 2, 2)
    if not args[1]:
        raise UsageError("the dump file name must not be empty")
    # Upload parameters travel as form fields: strings.
    return Request("send_mysqldump", {"serviceNodeId": str(_target(args[0]))}, upload=args[1])


def _parseWaitNodes(args: Sequence[str]) -> Request:
    _arity(args, 0, 1)
    timeout = _positive(args[0], "the timeout") if args else DEFAULT_WAIT
    return Request(None, {"timeout": timeout})


def _parseCall(args: Sequence[str]) -> Request:
    _arity(args, 1, 2)
    name = args[0]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]{0,127}", name):
        raise UsageError(f"not a method name: {name!r}")
    params: Any = {}
    if len(args) == 2:
        try:
            params = json.loads(args[1])
        except ValueError as e:
            raise UsageError(f"JSON_PARAMS is not valid JSON: {e}") from None
        if not isinstance(params, (dict, list)):
            raise UsageError("JSON_PARAMS must be a JSON object or array")
    return Request(name, params)


# ---------------------------------------------------------------------------
# Showing results to people


def _isScalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "-"
    return json.dumps(value)


_WRAPPERS = ("serviceNode", "return", "result")


def _unwrap(result: Any) -> Any:
    """The original's one-key envelopes: C{{"serviceNode": X}} is X."""
    while isinstance(result, dict) and len(result) == 1 and next(iter(result)) in _WRAPPERS:
        result = next(iter(result.values()))
    return result


def _isTrivial(result: Any) -> bool:
    result = _unwrap(result)
    return result is None or result is True or result == "OK" or result == {}


def _columns(rows: list[dict[str, Any]], pad: str) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys.extend(str(k) for k in row if str(k) not in keys)
    cells = [[_scalar(row.get(k)) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return [pad + line for line in lines]


def render(value: Any, indent: int = 0) -> list[str]:
    """
    Lines showing any JSON value: objects as aligned C{key: value} tables,
    arrays of flat objects as columns, arrays of scalars one per line.
    """
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return [pad + "(none)"]
        width = max(len(str(k)) for k in value) + 1
        lines: list[str] = []
        for k, v in value.items():
            if _isScalar(v):
                lines.append(f"{pad}{str(k) + ':':<{width}} {_scalar(v)}".rstrip())
            elif isinstance(v, list) and all(_isScalar(i) for i in v):
                text = ", ".join(_scalar(i) for i in v) or "(none)"
                lines.append(f"{pad}{str(k) + ':':<{width}} {text}")
            else:
                lines.append(f"{pad}{k}:")
                lines.extend(render(v, indent + 2))
        return lines
    if isinstance(value, list):
        if not value:
            return [pad + "(none)"]
        if all(isinstance(i, dict) and i and all(_isScalar(x) for x in i.values()) for i in value):
            return _columns(value, pad)
        lines = []
        for item in value:
            if _isScalar(item):
                lines.append(pad + _scalar(item))
            else:
                if lines:
                    lines.append("")
                lines.extend(render(item, indent))
        return lines
    return [pad + _scalar(value)]


def _write(out: TextIO, lines: Sequence[str]) -> None:
    out.writelines(line + "\n" for line in lines)


def _showGeneric(result: Any, request: Request, out: TextIO) -> None:
    if _isTrivial(result):
        out.write("OK\n")
    else:
        _write(out, render(_unwrap(result)))


def _showNodes(result: Any, request: Request, out: TextIO) -> None:
    nodes = _unwrap(result)
    if isinstance(nodes, list) and not nodes:
        out.write("(no nodes)\n")
    else:
        _write(out, render(nodes))


def _describeNode(node: dict[str, Any]) -> str:
    text = f"node {_scalar(node.get('id'))}"
    if node.get("name"):
        text += f" ({node['name']})"
    if node.get("state"):
        text += f", state {node['state']}"
    return text


def _showAdded(result: Any, request: Request, out: TextIO) -> None:
    nodes = _unwrap(result)
    if isinstance(nodes, dict) and "id" in nodes:
        nodes = [nodes]
    if isinstance(nodes, list) and nodes and all(isinstance(n, dict) for n in nodes):
        _write(out, ["added " + _describeNode(n) for n in nodes])
    else:
        _showGeneric(result, request, out)


def _param(request: Request, name: str) -> Any:
    return request.params.get(name) if isinstance(request.params, dict) else None


def _where(request: Request) -> str:
    target = _param(request, "serviceNodeId")
    return "on every node" if target == "all" else f"on node {target}"


def _done(describe: Callable[[Request], str]) -> Shower:
    """A line saying what was done, then the result unless it is just OK."""

    def show(result: Any, request: Request, out: TextIO) -> None:
        out.write(describe(request) + "\n")
        if not _isTrivial(result):
            _write(out, render(_unwrap(result), 2))

    return show


def _showMethods(result: Any, request: Request, out: TextIO) -> None:
    if not (isinstance(result, list) and all(isinstance(m, dict) for m in result)):
        _showGeneric(result, request, out)
        return
    heads = []
    for m in result:
        head = f"{m.get('name')}({', '.join(map(str, m.get('params') or []))})"
        if m.get("upload"):
            head += " [upload]"
        heads.append(head)
    width = max((len(h) for h in heads), default=0)
    for head, m in zip(heads, result):
        doc = str(m.get("doc") or "").split("\n")[0]
        if m.get("aliases"):
            doc += f" (also: {', '.join(map(str, m['aliases']))})"
        out.write(f"{head.ljust(width)}  {doc}".rstrip() + "\n")


def _showNothing(result: Any, request: Request, out: TextIO) -> None:
    """C{wait_nodes} prints as it goes."""


COMMANDS: tuple[Command, ...] = (
    Command(("list_nodes",), "", "the ids of the service's nodes",
            _noArgs("list_nodes"), _showNodes),
    Command(("get_node_info",), "ID", "one node's record",
            _oneNode("get_node_info", "serviceNodeId"), _showGeneric),
    Command(("get_service_info",), "", "the service's state",
            _noArgs("get_service_info"), _showGeneric),
    Command(("add_nodes", "add_node"), "[agent] [N]", "start N (default 1) new nodes",
            _parseAddNodes, _showAdded),
    Command(("remove_nodes", "delete_nodes"), "ID", "remove a node and end its VM",
            _oneNode("remove_nodes", "serviceNodeId"),
            _done(lambda r: f"removed node {_param(r, 'serviceNodeId')}")),
    Command(("configure_user",), "ID|all USER [PASS]",
            "create a database user or set its password (PASS is asked for if omitted)",
            _parseConfigureUser,
            _done(lambda r: f"configured user {_param(r, 'username')!r} {_where(r)}")),
    Command(("get_users",), "[ID|all]", "the database users (default: on every node)",
            _parseGetUsers, _showGeneric),
    Command(("delete_user",), "ID|all USER", "drop a database user",
            _parseDeleteUser,
            _done(lambda r: f"deleted user {_param(r, 'username')!r} {_where(r)}")),
    Command(("send_mysqldump",), "ID|all FILE", "load an SQL dump file (streamed upload)",
            _parseSendDump,
            _done(lambda r: f"loaded {os.path.basename(r.upload or '')} {_where(r)}")),
    Command(("set_up_replica_master",), "ID", "make a node the replication master",
            _oneNode("set_up_replica_master", "id"), _showGeneric),
    Command(("set_up_replica_slave",), "ID", "make a node a replica of the master",
            _oneNode("set_up_replica_slave", "id"), _showGeneric),
    Command(("get_service_performance",), "", "the service's performance figures",
            _noArgs("get_service_performance"), _showGeneric),
    Command(("shutdown",), "", "stop the service: remove every node",
            _noArgs("shutdown"), _showGeneric),
    Command(("wait_nodes",), "[TIMEOUT]",
            f"wait until every node is RUNNING or ERROR (default {DEFAULT_WAIT:g} s)",
            _parseWaitNodes, _showNothing),
    Command(("list_methods",), "", "the methods the manager publishes",
            _noArgs("list_methods"), _showMethods),
    Command(("call",), "METHOD [JSON_PARAMS]", "call any method with JSON parameters",
            _parseCall, _showGeneric),
)

COMMANDS_BY_NAME: dict[str, Command] = {n: c for c in COMMANDS for n in c.names}


def parseCommand(words: Sequence[str], *, passwordStdin: bool = False) -> Request:
    """
    Map C{COMMAND [ARGS...]} to the manager call it stands for.

    @raise UsageError: unknown command, or wrong arguments for it.
    """
    if not words:
        raise UsageError("no command given")
    command = COMMANDS_BY_NAME.get(words[0])
    if command is None:
        raise UsageError(f"unknown command {words[0]!r} (see --help for the list)")
    try:
        request = command.parse(list(words[1:]))
    except UsageError as e:
        raise UsageError(f"{words[0]}: {e}\nusage: {PROG} ... {_synopsis(command)}") from None
    if passwordStdin and not request.askPassword:
        raise UsageError(
            "--password-stdin is for configure_user without a PASS argument "
            "(a password given on the command line is not also read from stdin)"
        )
    return request


def _synopsis(command: Command) -> str:
    return f"{'|'.join(command.names)} {command.synopsis}".rstrip()


# ---------------------------------------------------------------------------
# The command line around the command


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _ArgumentParser(argparse.ArgumentParser):
    """An argparse parser that writes to the given streams and raises, never exits."""

    def __init__(self, stdout: TextIO, stderr: TextIO, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stdout = stdout
        self.stderr = stderr

    def print_help(self, file: Any = None) -> None:
        self.stdout.write(self.format_help())

    def print_usage(self, file: Any = None) -> None:
        self.stderr.write(self.format_usage())

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self.stderr.write(message)
        raise _Exit(status)

    def error(self, message: str) -> NoReturn:
        self.print_usage()
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


_USAGE = f"""\
{PROG} [OPTIONS] HOST PORT COMMAND [ARGS...]
       {PROG} [OPTIONS] --url URL COMMAND [ARGS...]
       {PROG} [OPTIONS] COMMAND [ARGS...]   (manager at ${URL_ENV} or {DEFAULT_URL})"""


def _epilog() -> str:
    width = max(len(_synopsis(c)) for c in COMMANDS)
    lines = ["commands:"]
    lines += [f"  {_synopsis(c).ljust(width)}  {c.summary}" for c in COMMANDS]
    lines += [
        "",
        f"The API token is taken from --token, else ${TOKEN_ENV}, else --token-file, else the",
        "first readable of " + " and ".join(DEFAULT_TOKEN_FILES) + ".",
        "Arguments that start with '-' (a password, say) go after '--'.",
        "",
        "exit status: 0 success, 1 error reply, 2 usage error, 3 cannot connect or no reply,",
        "4 wait_nodes timed out (1 if a node is in ERROR), 130 interrupted.",
    ]
    return "\n".join(lines)


def _timeoutArg(text: str) -> float:
    try:
        return _positive(text, "--timeout")
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _argumentParser(stdout: TextIO, stderr: TextIO) -> _ArgumentParser:
    parser = _ArgumentParser(
        stdout,
        stderr,
        prog=PROG,
        usage=_USAGE,
        description="Call the conpaassql manager's API.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", help="the manager's URL, instead of HOST PORT")
    parser.add_argument(
        "--token",
        help=f"the API token (other local users can see it in the process list: prefer "
        f"${TOKEN_ENV} or --token-file)",
    )
    parser.add_argument("--token-file", metavar="FILE", help="read the API token from FILE")
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    parser.add_argument(
        "--ca-cert", metavar="FILE",
        help="verify an https:// manager by this CA certificate (its state directory's ca.pem)",
    )
    parser.add_argument(
        "--timeout", type=_timeoutArg, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help=f"how long to wait for each reply (default {DEFAULT_TIMEOUT:g}; "
        "uploads are not limited)",
    )
    parser.add_argument(
        "--password-stdin", action="store_true",
        help="configure_user: read the password from the first line of stdin",
    )
    parser.add_argument("words", nargs="*", help=argparse.SUPPRESS)
    return parser


def _hostPortURL(host: str, port: str) -> str:
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise UsageError(f"PORT must be a port number, not {port!r}")
    if not host or "/" in host or "@" in host:
        raise UsageError(f"HOST must be a host name or address, not {host!r}")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{int(port)}/"


def _checkURL(url: str) -> str:
    if not re.match(r"https?://[^/?#]+", url):
        raise UsageError(f"--url must be an http:// or https:// URL, not {url!r}")
    return url


def splitTarget(
    words: Sequence[str], url: str | None, environ: Mapping[str, str]
) -> tuple[str, list[str]]:
    """
    The manager's URL and the C{COMMAND [ARGS...]} words, from the
    positional words of the command line.
    """
    if url is not None:
        return _checkURL(url), list(words)
    if words and words[0] in COMMANDS_BY_NAME:
        return _checkURL(environ.get(URL_ENV) or DEFAULT_URL), list(words)
    if len(words) < 3:
        raise UsageError("give HOST PORT COMMAND, or --url URL COMMAND")
    return _hostPortURL(words[0], words[1]), list(words[2:])


def _readToken(path: str) -> str | None:
    with open(path, encoding="utf-8") as f:
        return f.read().strip() or None


def resolveToken(
    option: str | None,
    tokenFile: str | None,
    environ: Mapping[str, str],
    defaultFiles: Sequence[str] = DEFAULT_TOKEN_FILES,
) -> tuple[str | None, str]:
    """
    The API token and where it came from (for messages: never the token).

    @raise UsageError: C{--token-file} cannot be read or is empty.
    """
    if option:
        return option.strip(), "--token"
    if environ.get(TOKEN_ENV, "").strip():
        return environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    if tokenFile is not None:
        try:
            token = _readToken(tokenFile)
        except OSError as e:
            raise UsageError(f"cannot read the token file: {e}") from None
        except UnicodeDecodeError:
            raise UsageError(f"the token file {tokenFile} is not text") from None
        if token is None:
            raise UsageError(f"the token file {tokenFile} is empty")
        return token, tokenFile
    home = environ.get("HOME") or os.path.expanduser("~")
    for path in defaultFiles:
        if path.startswith("~"):
            path = home + path[1:]
        try:
            token = _readToken(path)
        except (OSError, UnicodeDecodeError):
            continue
        if token is not None:
            return token, path
    return None, "nowhere"


@dataclass(frozen=True)
class Invocation:
    """A command line, parsed and complete: what L{execute} needs."""

    url: str
    token: str | None
    tokenSource: str
    command: Command
    request: Request
    json: bool = False
    timeout: float = DEFAULT_TIMEOUT
    #: The CA certificate (PEM) an https manager is verified by.
    caCert: bytes | None = None


def _askPassword(
    request: Request, fromStdin: bool, stdin: IO[str], getpass: Callable[[str], str]
) -> Request:
    if not request.askPassword:
        return request
    assert isinstance(request.params, dict)
    user = request.params.get("username")
    if fromStdin:
        password = stdin.readline().rstrip("\r\n")
    else:
        password = getpass(f"Password for {user}: ")
        if getpass("Repeat the password: ") != password:
            raise UsageError("the passwords do not match")
    if not password:
        raise UsageError("the password must not be empty")
    return Request(request.method, {**request.params, "password": password}, request.upload)


def prepare(
    argv: Sequence[str],
    stdout: TextIO,
    stderr: TextIO,
    *,
    stdin: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
    getpass: Callable[[str], str] | None = None,
) -> Invocation | int:
    """
    Parse the command line, find the token and read a password if one is
    needed.  Synchronous: it runs before the reactor.

    @return: the L{Invocation}, or an exit status when there is nothing to
        call (C{--help}: 0; a usage error, already reported: 2).
    """
    environ = os.environ if environ is None else environ
    parser = _argumentParser(stdout, stderr)
    try:
        options = parser.parse_intermixed_args(list(argv))
        url, words = splitTarget(options.words, options.url, environ)
        command = COMMANDS_BY_NAME.get(words[0]) if words else None
        request = parseCommand(words, passwordStdin=options.password_stdin)
        assert command is not None
        token, source = resolveToken(options.token, options.token_file, environ)
        caCert = _readCACert(options.ca_cert, url)
        request = _askPassword(
            request, options.password_stdin, stdin or sys.stdin, getpass or _getpass.getpass
        )
    except _Exit as e:
        return e.code
    except UsageError as e:
        stderr.write(f"{PROG}: error: {e}\n")
        return EXIT_USAGE
    except EOFError:
        stderr.write(f"\n{PROG}: error: no password given (end of input)\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        stderr.write("\ninterrupted\n")
        return EXIT_INTERRUPTED
    return Invocation(url, token, source, command, request, options.json, options.timeout,
                      caCert)


def _readCACert(path: str | None, url: str) -> bytes | None:
    if path is None:
        return None
    if not url.startswith("https://"):
        raise UsageError("--ca-cert needs an https:// manager URL")
    try:
        return readCertificate(path)
    except TLSFileError as e:
        raise UsageError(str(e)) from None


# ---------------------------------------------------------------------------
# Talking to the manager


def _size(n: float, scale: float) -> str:
    return f"{n:.0f}" if scale == 1 else f"{n / scale:.1f}"


def _unit(total: int) -> tuple[float, str]:
    for scale, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if total >= scale:
            return scale, name
    return 1, "B"


class ProgressBar:
    """
    Upload progress on a stream: redrawn in place on a terminal, otherwise
    one line at the end.
    """

    WIDTH = 20

    def __init__(self, stream: TextIO, name: str) -> None:
        self._stream = stream
        self._name = name
        try:
            self._tty = stream.isatty()
        except (AttributeError, ValueError):
            self._tty = False
        self._sent = 0
        self._total = 0
        self._shown = ""
        self._started = False

    @staticmethod
    def line(sent: int, total: int) -> str:
        fraction = 1.0 if total <= 0 else min(1.0, sent / total)
        filled = int(fraction * ProgressBar.WIDTH)
        scale, unit = _unit(total)
        return (
            f"[{'#' * filled}{'.' * (ProgressBar.WIDTH - filled)}] {int(fraction * 100):3d}% "
            f"{_size(sent, scale)}/{_size(total, scale)} {unit}"
        )

    def update(self, sent: int, total: int) -> None:
        self._sent, self._total, self._started = sent, total, True
        if not self._tty:
            return
        text = self.line(sent, total)
        if text != self._shown:
            self._shown = text
            self._stream.write(f"\r{self._name} {text}")
            self._stream.flush()

    def finish(self) -> None:
        if self._tty:
            if self._shown:
                self._stream.write("\n")
        elif self._started:
            self._stream.write(f"{self._name} {self.line(self._sent, self._total)}\n")
        self._stream.flush()


class _Caller(Protocol):
    async def call(
        self, method: str, params: Mapping[str, Any] | list[Any] | None = None,
        *, timeout: float | None = None,
    ) -> Any: ...


def _nodeIds(result: Any) -> list[Any]:
    nodes = _unwrap(result)
    if not isinstance(nodes, list):
        raise TransportError(f"list_nodes: expected a list of nodes, got {nodes!r:.100}")
    return [n.get("id") if isinstance(n, dict) else n for n in nodes]


def _nodeState(info: Any) -> str:
    node = _unwrap(info)
    if isinstance(node, dict):
        if isinstance(node.get("state"), str):
            return str(node["state"])
        if node.get("isRunningMySQL") is True:
            return "RUNNING"
    return "UNKNOWN"


async def waitNodes(
    client: _Caller,
    clock: Any,
    timeout: float,
    out: TextIO,
    *,
    interval: float = 1.0,
    result: dict[str, str] | None = None,
) -> int:
    """
    Poll C{list_nodes} and each node's C{get_node_info} every C{interval}
    seconds, writing a line to C{out} whenever a node's state changes, until
    every node is RUNNING or ERROR.

    @param result: filled with C{{node id: state}} as last seen.
    @return: L{EXIT_OK} when every node is RUNNING, L{EXIT_ERROR_REPLY} when
        one is in ERROR, L{EXIT_WAIT_TIMEOUT} when C{timeout} passed first.
    @raise RPCError: an error reply other than a node gone missing.
    @raise TransportError: no reply.
    """
    deadline = clock.seconds() + timeout
    states: dict[Any, str] = {}
    while True:
        ids = _nodeIds(await client.call("list_nodes", {}))
        for gone in [n for n in states if n not in ids]:
            out.write(f"node {gone}: removed\n")
            del states[gone]
        for nodeId in ids:
            try:
                info = await client.call("get_node_info", {"serviceNodeId": nodeId})
            except NotFound:
                continue  # removed since list_nodes; the next round says so
            state = _nodeState(info)
            before = states.get(nodeId)
            if before != state:
                out.write(f"node {nodeId}: {before} -> {state}\n" if before
                          else f"node {nodeId}: {state}\n")
                out.flush()
            states[nodeId] = state
        if result is not None:
            result.clear()
            result.update({str(k): v for k, v in states.items()})
        waiting = {n: s for n, s in states.items() if s not in SETTLED}
        if not waiting:
            failed = [str(n) for n, s in states.items() if s == "ERROR"]
            if failed:
                out.write(f"in ERROR: node {', '.join(failed)}\n")
                return EXIT_ERROR_REPLY
            out.write(f"all {len(states)} nodes RUNNING\n" if states else "no nodes\n")
            return EXIT_OK
        left = deadline - clock.seconds()
        if left <= 0:
            pending = ", ".join(f"{n} ({s})" for n, s in waiting.items())
            out.write(f"timed out after {timeout:g} s; still waiting for node {pending}\n")
            return EXIT_WAIT_TIMEOUT
        await deferLater(clock, min(interval, left))


class _CountingReader(io.BufferedReader):
    """
    A file opened for reading that reports C{(bytes read, size)} to
    C{progress} after each read, as the upload streams it.

    It is a L{io.BufferedReader}, which treq adapts to a streaming body
    producer by itself.  (C{RPCClient.upload(progress=...)} wraps the file in
    an object treq cannot adapt, so the client counts on its own side.)
    """

    def __init__(self, path: str, progress: Callable[[int, int], None]) -> None:
        super().__init__(io.FileIO(path, "r"))
        self._progress = progress
        self._sent = 0
        try:
            if not stat.S_ISREG(os.fstat(self.fileno()).st_mode):
                raise OSError(f"{path}: not a regular file")
            self._total = os.fstat(self.fileno()).st_size
        except BaseException:
            self.close()
            raise

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self._sent += len(data)
        self._progress(self._sent, self._total)
        return data


async def _upload(client: RPCClient, request: Request, stderr: TextIO) -> Any:
    assert request.method is not None and request.upload is not None
    name = os.path.basename(request.upload)
    bar = ProgressBar(stderr, name)
    with _CountingReader(request.upload, bar.update) as f:
        try:
            return await client.upload(
                request.method,
                {k: str(v) for k, v in dict(request.params).items()},
                {DUMP_FIELD: (name, f)},
            )
        finally:
            bar.finish()


async def execute(
    invocation: Invocation,
    stdout: TextIO,
    stderr: TextIO,
    *,
    reactor: Any = None,
    pollInterval: float = 1.0,
) -> int:
    """
    Make the call, print the outcome and close the client's connections.

    @return: the exit status.  It never fails for anything the manager or
        the network does.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    request = invocation.request
    client = RPCClient(invocation.url, invocation.token, reactor=reactor,
                       timeout=invocation.timeout,
                       tls=ClientTLS(invocation.caCert) if invocation.caCert else None)
    try:
        if request.method is None:
            states: dict[str, str] = {}
            assert isinstance(request.params, dict)
            code = await waitNodes(
                client, reactor, request.params["timeout"],
                stderr if invocation.json else stdout,
                interval=pollInterval, result=states,
            )
            if invocation.json:
                stdout.write(json.dumps(states, indent=2) + "\n")
            return code
        if request.upload is not None:
            result = await _upload(client, request, stderr)
        else:
            result = await client.call(request.method, request.params)
    except RPCError as e:
        stderr.write(f"error {e.code}: {e.message}\n")
        if e.code == UNAUTHORIZED:
            stderr.write(
                f"(no API token found: give --token-file FILE or set ${TOKEN_ENV})\n"
                if invocation.token is None
                else f"(the token used came from {invocation.tokenSource})\n"
            )
        return EXIT_ERROR_REPLY
    except TransportError as e:
        stderr.write(f"{PROG}: {e}\n")
        return EXIT_TRANSPORT
    except OSError as e:
        stderr.write(f"{PROG}: error: {e}\n")
        return EXIT_USAGE
    finally:
        await client.close()
    if invocation.json:
        stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        invocation.command.show(result, request, stdout)
    return EXIT_OK


async def run(
    argv: Sequence[str],
    stdout: TextIO,
    stderr: TextIO,
    *,
    stdin: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
    getpass: Callable[[str], str] | None = None,
    reactor: Any = None,
    pollInterval: float = 1.0,
) -> int:
    """
    The whole client, in-process: parse C{argv}, call, print.

    @return: the exit status.
    """
    prepared = prepare(argv, stdout, stderr, stdin=stdin, environ=environ, getpass=getpass)
    if isinstance(prepared, int):
        return prepared
    return await execute(prepared, stdout, stderr, reactor=reactor, pollInterval=pollInterval)


def _exitOnSignal(signum: int, frame: Any) -> None:
    """
    Ctrl-C or SIGTERM: leave at once with 130, as a shell user expects.
    Twisted's own handler would stop the reactor, and the call in flight
    would then fail as a lost connection, reported as such with status 3.
    Nothing needs tidying that the system does not do itself: the client
    holds only sockets and a file open for reading; a manager sees an
    interrupted upload as a lost connection and drops it.
    """
    sys.stdout.flush()
    sys.stderr.write("\ninterrupted\n")
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script: exits with the status of L{execute}."""
    prepared = prepare(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr)
    if isinstance(prepared, int):
        sys.exit(prepared)
    invocation = prepared

    def installSignalHandlers() -> None:
        # After the reactor's own, which it installs as it starts.
        signal.signal(signal.SIGINT, _exitOnSignal)
        signal.signal(signal.SIGTERM, _exitOnSignal)

    async def work(reactor: Any) -> None:
        reactor.callWhenRunning(installSignalHandlers)
        try:
            code = await execute(invocation, sys.stdout, sys.stderr, reactor=reactor)
        except Exception:  # noqa: BLE001
            # A bug: react() would log it where nobody looks, so show it.
            traceback.print_exc()
            code = 1
        if code:
            raise SystemExit(code)

    react(lambda reactor: Deferred.fromCoroutine(work(reactor)))

if __name__ == "__main__":
    main()
