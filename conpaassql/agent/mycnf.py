"""
Reading and editing MySQL/MariaDB option files (C{my.cnf}).

The original conpaassql edited C{my.cnf} with C{sed -i} built from request
values: a remote code execution hole and a way to truncate the file.  Here
the file is parsed line by line into a L{MyCnf} that keeps every line it
does not change byte for byte (comments, blank lines, C{!include} and
C{!includedir} directives, unusual spellings), and changes are written back
atomically (temporary file and rename, see
L{conpaassql.common.files.write_file_atomic}).

The parsing rules follow the server's own option file reader
(C{mysys/my_default.c}): C{#} and C{;} start comment lines, a C{#} outside
quotes starts a comment anywhere in a line, a value may be quoted with
C{'} or C{"} and the escapes C{\\b \\t \\n \\r \\s \\\\ \\" \\'} are
understood.  Option names are compared with C{-} and C{_} treated alike.

Only the options of the L{WHITELIST} may be set from outside (by the agent's
API).  Each has a validator that accepts a strict, documented set of values
and returns the value in the form written to the file; anything else raises
L{InvalidOption}.  Validated values never contain whitespace at the ends,
control characters, quotes, backslashes, C{#}, C{;}, C{[} or C{]}, so they
can be written unquoted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from conpaassql.common.files import write_file_atomic

__all__ = [
    "WHITELIST",
    "InvalidOption",
    "MyCnf",
    "OptionSpec",
    "canonical_option_name",
    "normalise_key",
    "quote_value",
    "read_mycnf",
    "set_options",
    "validate_host",
    "validate_option",
    "validate_options",
    "write_mycnf",
]


class InvalidOption(ValueError):
    """
    An option that may not be set, or a value that is not allowed for it.

    @ivar key: the option name as given by the caller.
    @ivar message: what is wrong and what is allowed.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


# --------------------------------------------------------------------------
# Parsing


def normalise_key(key: str) -> str:
    """
    Return the comparison form of an option name: lower case, C{-} as C{_}.
    """
    return key.strip().replace("-", "_").lower()


def _remove_end_comment(text: str) -> str:
    """
    Cut a trailing C{#} comment, honouring quotes and escapes inside quotes,
    the way the server's option file reader does.
    """
    quote = ""
    escape = False
    for i, ch in enumerate(text):
        if ch in "'\"" and not escape:
            if not quote:
                quote = ch
            elif quote == ch:
                quote = ""
        if not quote and ch == "#":
            return text[:i]
        escape = bool(quote) and ch == "\\" and not escape
    return text


_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "r": "\r", "s": " ", "\\": "\\", '"': '"', "'": "'"}


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
        value = value[1:-1]
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
            else:
                out.append("\\" + nxt)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


_SIMPLE_VALUE = re.compile(r"[A-Za-z0-9_./:@+,*-]+\Z")


def quote_value(value: str) -> str:
    """
    Return C{value} in the form to write after C{key=} so that the server's
    option file reader reads back exactly C{value}.

    Simple values are written as they are; anything else is double-quoted
    with C{\\}, C{"} and tab escaped.

    @raise ValueError: if the value contains a line break or NUL, which an
        option file cannot hold.
    """
    if any(ch in value for ch in "\n\r\0"):
        raise ValueError("an option file value cannot contain a line break or NUL")
    if _SIMPLE_VALUE.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
    return f'"{escaped}"'


_LINES = re.compile(r"[^\n]*\n|[^\n]+")


@dataclass
class _Line:
    """
    One physical line of an option file.

    @ivar kind: C{"blank"}, C{"comment"}, C{"directive"} (C{!include...}),
        C{"section"}, C{"option"} or C{"other"} (kept, never interpreted).
    @ivar text: the line without its line ending.
    @ivar ending: the line ending (C{"\\n"}, C{"\\r\\n"} or C{""}).
    @ivar section: the section a C{"section"} line opens, or the section an
        C{"option"} line belongs to (L{None} before the first header).
    @ivar key: the normalised option name of an C{"option"} line.
    @ivar value: the parsed value of an C{"option"} line, L{None} when the
        line has no C{=}.
    """

    kind: str
    text: str
    ending: str
    section: str | None = None
    key: str | None = None
    value: str | None = None


def _parse_line(raw: str, section: str | None) -> _Line:
    if raw.endswith("\r\n"):
        text, ending = raw[:-2], "\r\n"
    elif raw.endswith("\n"):
        text, ending = raw[:-1], "\n"
    else:
        text, ending = raw, ""
    stripped = text.strip()
    if not stripped:
        return _Line("blank", text, ending)
    if stripped[0] in "#;":
        return _Line("comment", text, ending)
    if stripped[0] == "!":
        return _Line("directive", text, ending)
    if stripped[0] == "[":
        end = stripped.find("]")
        if end < 0:
            return _Line("other", text, ending)
        return _Line("section", text, ending, section=stripped[1:end].strip())
    body = _remove_end_comment(text).strip()
    if "=" in body:
        key, value = body.split("=", 1)
        if not key.strip():
            return _Line("other", text, ending)
        return _Line("option", text, ending, section, normalise_key(key), _unquote(value))
    if not body:
        return _Line("other", text, ending)
    return _Line("option", text, ending, section, normalise_key(body), None)


class MyCnf:
    """
    A parsed option file that renders back to the same text.

    Sections that appear more than once are treated as one (as the server
    does); the last occurrence of an option wins.
    """

    def __init__(self, lines: list[_Line]) -> None:
        self._lines = lines

    @classmethod
    def parse(cls, text: str) -> MyCnf:
        """
        Parse the text of an option file.  Never fails: lines that are not
        understood are kept as they are.
        """
        lines: list[_Line] = []
        section: str | None = None
        # Only "\n" ends a line for the server (not the other characters
        # str.splitlines() knows); a "\r" before it is part of the ending.
        for raw in _LINES.findall(text):
            line = _parse_line(raw, section)
            if line.kind == "section":
                section = line.section
            lines.append(line)
        return cls(lines)

    def render(self) -> str:
        """
        Return the text of the file.
        """
        return "".join(line.text + line.ending for line in self._lines)

    def sections(self) -> list[str]:
        """
        Return the section names, in order of first appearance.
        """
        seen: list[str] = []
        for line in self._lines:
            if line.kind == "section" and line.section not in seen:
                seen.append(line.section)  # type: ignore[arg-type]
        return seen

    def _options(self, section: str, key: str | None = None) -> Iterator[tuple[int, _Line]]:
        norm = normalise_key(key) if key is not None else None
        for index, line in enumerate(self._lines):
            if (
                line.kind == "option"
                and line.section == section
                and (norm is None or line.key == norm)
            ):
                yield index, line

    def get(self, section: str, key: str) -> str | None:
        """
        Return the value of an option: L{None} if it is absent, C{""} if it
        is present without a value.
        """
        found: str | None = None
        for _, line in self._options(section, key):
            found = line.value if line.value is not None else ""
        return found

    def items(self, section: str) -> dict[str, str]:
        """
        Return the effective options of a section, by normalised name.
        """
        return {
            line.key: (line.value if line.value is not None else "")  # type: ignore[misc]
            for _, line in self._options(section)
        }

    def set(self, section: str, key: str, value: str | None) -> None:
        """
        Set an option, written as C{key=value} (or just C{key} when C{value}
        is L{None}).

        The last existing line for the option is replaced and earlier ones
        removed; a new option goes after the last option of the section's
        last occurrence; a missing section is appended at the end of the file.

        @raise ValueError: if C{value} cannot be held by an option file.
        """
        text = key if value is None else f"{key}={quote_value(value)}"
        new = _Line("option", text, "\n", section, normalise_key(key), value)
        existing = [index for index, _ in self._options(section, key)]
        if existing:
            last = existing[-1]
            new.ending = self._lines[last].ending or "\n"
            self._lines[last] = new
            for index in reversed(existing[:-1]):
                del self._lines[index]
            return

        header = None
        for index, line in enumerate(self._lines):
            if line.kind == "section" and line.section == section:
                header = index
        if header is None:
            self._terminate_last_line()
            if self._lines and self._lines[-1].kind != "blank":
                self._lines.append(_Line("blank", "", "\n"))
            self._lines.append(_Line("section", f"[{section}]", "\n", section=section))
            self._lines.append(new)
            return

        insert_at = header + 1
        for index in range(header + 1, len(self._lines)):
            line = self._lines[index]
            if line.kind == "section":
                break
            if line.kind not in ("blank", "comment"):
                insert_at = index + 1
        if insert_at == len(self._lines):
            self._terminate_last_line()
        self._lines.insert(insert_at, new)

    def remove(self, section: str, key: str) -> bool:
        """
        Remove every line setting an option; return whether there was one.
        """
        existing = [index for index, _ in self._options(section, key)]
        for index in reversed(existing):
            del self._lines[index]
        return bool(existing)

    def _terminate_last_line(self) -> None:
        if self._lines and not self._lines[-1].ending:
            self._lines[-1].ending = "\n"


def read_mycnf(path: str) -> MyCnf:
    """
    Read and parse an option file.

    @raise OSError: if the file cannot be read.
    """
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return MyCnf.parse(f.read())


def write_mycnf(path: str, cnf: MyCnf, mode: int | None = None) -> None:
    """
    Write an option file atomically.  With C{mode} L{None} an existing
    file keeps its mode and owner.

    @raise OSError: if the file cannot be written; it is then unchanged.
    """
    write_file_atomic(path, cnf.render().encode("utf-8", "surrogateescape"), mode=mode)


# --------------------------------------------------------------------------
# Validation

_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\Z")
_DIGITS = re.compile(r"[0-9]{1,20}\Z")
_DECIMAL = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?\Z")
_SIZE = re.compile(r"([0-9]{1,20})([KMGT]?)\Z", re.IGNORECASE)
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]{1,64}\Z")
_SQL_MODE = re.compile(r"(?:[A-Z_]{1,64}(?:,[A-Z_]{1,64})*)?\Z")
_BASENAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
_PATH = re.compile(r"/[A-Za-z0-9_./@+-]{0,1023}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def validate_host(value: str) -> str:
    """
    Check that C{value} is an IPv4/IPv6 address or a DNS host name.

    @return: the value (an address in its compressed form).
    @raise ValueError: otherwise.
    """
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if len(value) <= 253 and _HOSTNAME.match(value):
        return value
    raise ValueError("an IP address or a host name is allowed")


def _integer(low: int, high: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not _DIGITS.match(value) or not low <= int(value) <= high:
            raise ValueError(f"an integer from {low} to {high} is allowed")
        return str(int(value))

    return check


def _size(low: int, high: int, low_text: str, high_text: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        match = _SIZE.match(value)
        if match:
            number, unit = match.group(1), match.group(2).upper()
            if low <= int(number) * _SIZE_UNITS[unit] <= high:
                return f"{int(number)}{unit}"
        raise ValueError(
            f"a size in bytes, optionally with a K, M, G or T suffix, "
            f"from {low_text} to {high_text} is allowed"
        )

    return check


def _boolean(value: str) -> str:
    upper = value.upper()
    if upper in ("1", "ON"):
        return "ON"
    if upper in ("0", "OFF"):
        return "OFF"
    raise ValueError("0, 1, ON or OFF is allowed")


def _choice(*choices: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value.upper() in choices:
            return value.upper()
        raise ValueError("one of " + ", ".join(choices) + " is allowed")

    return check


def _decimal(high: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not _DECIMAL.match(value) or float(value) > high:
            raise ValueError(f"a non-negative number up to {high} (like 0.5 or 10) is allowed")
        return value

    return check


def _identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError("a name of 1 to 64 letters, digits and underscores is allowed")
    return value.lower()


def _sql_mode(value: str) -> str:
    upper = value.upper()
    if not _SQL_MODE.match(upper):
        raise ValueError(
            "a comma-separated list of mode names (letters and underscores) is allowed"
        )
    return upper


def _basename(value: str) -> str:
    if not _BASENAME.match(value):
        raise ValueError(
            "a file base name of 1 to 64 letters, digits, '_', '.' and '-' "
            "(not starting with '.' or '-', no '/') is allowed"
        )
    return value


def _absolute_path(value: str) -> str:
    if not _PATH.match(value):
        raise ValueError(
            "an absolute path of letters, digits and '_./@+-' (at most 1024 characters) is allowed"
        )
    parts = value.split("/")
    if any(part in (".", "..") for part in parts):
        raise ValueError("an absolute path without '.' or '..' components is allowed")
    return "/" + "/".join(part for part in parts if part)


def _host(value: str) -> str:
    return validate_host(value)


@dataclass(frozen=True)
class OptionSpec:
    """
    A C{[mysqld]} option that may be set from outside.

    @ivar name: the spelling written to C{my.cnf}.
    @ivar allowed: what values are allowed, in words.
    @ivar check: returns the value as it is written, or raises L{ValueError}
        with a message saying what is allowed.
    @ivar boolean: whether Python booleans are accepted (as ON/OFF).
    """

    name: str
    allowed: str
    check: Callable[[str], str]
    boolean: bool = False


def _spec(
    name: str, allowed: str, check: Callable[[str], str], boolean: bool = False
) -> OptionSpec:
    return OptionSpec(name, allowed, check, boolean)


#: The C{[mysqld]} options that may be set through the agent, by normalised
#: name (C{-} and C{_} are accepted alike).  Everything else is refused.
WHITELIST: Mapping[str, OptionSpec] = {
    normalise_key(spec.name): spec
    for spec in [
        _spec("port", "TCP port, 1-65535", _integer(1, 65535)),
        _spec("bind-address", "IP address or host name", _host),
        _spec("datadir", "absolute path", _absolute_path),
        _spec("max_connections", "integer 1-100000", _integer(1, 100000)),
        _spec(
            "innodb_buffer_pool_size",
            "size 2M-16T, e.g. 128M, 1G",
            _size(2 << 20, 16 << 40, "2M", "16T"),
        ),
        _spec(
            "max_allowed_packet",
            "size 1K-1G, e.g. 16M",
            _size(1 << 10, 1 << 30, "1K", "1G"),
        ),
        _spec("wait_timeout", "seconds, 1-31536000", _integer(1, 31536000)),
        _spec("slow_query_log", "0, 1, ON or OFF", _boolean, boolean=True),
        _spec("long_query_time", "seconds, a number 0-31536000", _decimal(31536000)),
        _spec("character_set_server", "character set name", _identifier),
        _spec("collation_server", "collation name", _identifier),
        _spec("sql_mode", "comma-separated mode names", _sql_mode),
        _spec("server_id", "integer 0-4294967295", _integer(0, 4294967295)),
        _spec("log_bin", "binary log base name", _basename),
        _spec("binlog_format", "ROW, STATEMENT or MIXED", _choice("ROW", "STATEMENT", "MIXED")),
        _spec("read_only", "0, 1, ON or OFF", _boolean, boolean=True),
        _spec("gtid_domain_id", "integer 0-4294967295", _integer(0, 4294967295)),
        _spec("log_slave_updates", "0, 1, ON or OFF", _boolean, boolean=True),
        _spec("relay_log", "relay log base name", _basename),
        _spec("gtid_strict_mode", "0, 1, ON or OFF", _boolean, boolean=True),
        _spec("super_read_only", "0, 1, ON or OFF", _boolean, boolean=True),
        _spec(
            "gtid_mode",
            "OFF, OFF_PERMISSIVE, ON_PERMISSIVE or ON (MySQL)",
            _choice("OFF", "OFF_PERMISSIVE", "ON_PERMISSIVE", "ON"),
        ),
        _spec("enforce_gtid_consistency", "ON, OFF or WARN (MySQL)", _choice("ON", "OFF", "WARN")),
    ]
}


def canonical_option_name(key: str) -> str:
    """
    Return the spelling of a whitelisted option as written to C{my.cnf}.

    @raise InvalidOption: if the option may not be set.
    """
    if not isinstance(key, str) or _CONTROL.search(key):
        raise InvalidOption(repr(key), "not an option name")
    spec = WHITELIST.get(normalise_key(key))
    if spec is None:
        raise InvalidOption(
            key,
            "this option cannot be set; settable options are: "
            + ", ".join(spec.name for spec in WHITELIST.values()),
        )
    return spec.name


def validate_option(key: str, value: object) -> str:
    """
    Validate a value for a whitelisted C{[mysqld]} option.

    @param key: the option name, with C{-} or C{_}.
    @param value: a string; integers, and for the numeric options floats,
        are accepted too, booleans for the ON/OFF options.
    @return: the value as it is to be written to C{my.cnf}.
    @raise InvalidOption: naming the key and what is allowed.
    """
    canonical_option_name(key)
    spec = WHITELIST[normalise_key(key)]
    if isinstance(value, bool):
        if not spec.boolean:
            raise InvalidOption(key, f"a boolean is not allowed; allowed: {spec.allowed}")
        text = "ON" if value else "OFF"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        raise InvalidOption(
            key, f"a {type(value).__name__} is not allowed; allowed: {spec.allowed}"
        )
    if _CONTROL.search(text):
        raise InvalidOption(key, f"control characters are not allowed; allowed: {spec.allowed}")
    try:
        return spec.check(text.strip(" "))
    except ValueError as e:
        raise InvalidOption(key, str(e)) from None


def validate_options(options: Mapping[str, object]) -> dict[str, str]:
    """
    Validate several options at once.

    @return: the written spelling of each option mapped to its validated value.
    @raise InvalidOption: for the first option that is not allowed; also if
        the same option is given twice in different spellings.
    """
    if not isinstance(options, Mapping):
        raise InvalidOption("options", "a mapping of option names to values is required")
    validated: dict[str, str] = {}
    for key, value in options.items():
        name = canonical_option_name(key)
        if name in validated:
            raise InvalidOption(key, "the option is given twice")
        validated[name] = validate_option(key, value)
    return validated


def set_options(
    path: str, options: Mapping[str, object], section: str = "mysqld"
) -> dict[str, str]:
    """
    Validate C{options} and write them into the option file C{path}.

    All values are validated before the file is touched.  The file is
    rewritten atomically, keeping its mode and every other line; a missing
    file is created (mode 0644).

    @return: the options as written (see L{validate_options}).
    @raise InvalidOption: if any option is refused; the file is unchanged.
    @raise OSError: if the file cannot be read or written; it is unchanged.
    """
    validated = validate_options(options)
    try:
        cnf = read_mycnf(path)
    except FileNotFoundError:
        cnf = MyCnf.parse("")
    for name, value in validated.items():
        cnf.set(section, name, value)
    write_mycnf(path, cnf)
    return validated
