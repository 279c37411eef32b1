"""
OpenNebula's template text (C{NAME = "value"}, C{NAME = [ K = "v", ... ]}).

L{renderTemplate} writes the template the driver sends with
C{one.vm.allocate}; L{parseTemplate} reads one the way oned's template parser
does (the simulator uses it, and the tests use it to check that every value
the driver writes comes back unchanged).

Quoting rules (OpenNebula's C{template_parser.l}): a double-quoted value may
hold anything; C{\\"} is its only escape.  oned stores values as CDATA, so a
value holding C{]]>} is refused, and it substitutes C{$NAME}, C{$USER[...]},
C{$NETWORK[...]} and the like inside CONTEXT values at allocate time, so a
C{$} would let a value pull other attributes of the account into the VM.
As a backslash right before the closing quote cannot be written
unambiguously, L{quoteValue} refuses backslashes, C{$}, C{]]>} and control
characters, and escapes double quotes: every value it accepts comes back
from oned exactly as given, and nothing it is given can add attributes,
close a vector, or reach oned's substitutions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = [
    "TemplateSyntaxError",
    "TemplateValueError",
    "parseTemplate",
    "quoteValue",
    "renderTemplate",
]

_NAME = re.compile(r"[A-Za-z0-9_]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: A template: ordered (name, value) pairs; a vector's value is a mapping.
Template = Sequence[tuple[str, "str | Mapping[str, str]"]]


class TemplateValueError(ValueError):
    """
    A value the template cannot carry safely.  The message names the
    attribute and the reason, never the value (it may be a secret).
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"template attribute {name}: {reason}")
        self.name = name
        self.reason = reason


class TemplateSyntaxError(ValueError):
    """The template text does not parse (simulator side)."""


def _checkName(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise TemplateValueError(name[:40], "a name is letters, digits and '_' only")
    return name.upper()


def quoteValue(name: str, value: str) -> str:
    """
    C{value} as a double-quoted template value.

    @raise TemplateValueError: if it holds a backslash, a C{$}, C{]]>} or a
        control character.
    """
    if "\\" in value:
        raise TemplateValueError(name, "a backslash cannot be carried safely")
    if "$" in value:
        raise TemplateValueError(name, "'$' would be expanded by OpenNebula")
    if "]]>" in value:
        raise TemplateValueError(name, "']]>' is refused by OpenNebula")
    if _CONTROL.search(value):
        raise TemplateValueError(name, "control characters are not allowed")
    return '"' + value.replace('"', '\\"') + '"'


def renderTemplate(template: Template) -> str:
    """
    The template text: one C{NAME = "value"} line per attribute, vectors as
    C{NAME = [\\n  K = "v",\\n  ... ]}.

    @raise TemplateValueError: for a bad name or a value L{quoteValue} refuses.
    """
    lines = []
    for name, value in template:
        key = _checkName(name)
        if isinstance(value, str):
            lines.append(f"{key} = {quoteValue(key, value)}")
            continue
        if not value:
            raise TemplateValueError(key, "a vector needs at least one value")
        parts = [
            f"  {_checkName(k)} = {quoteValue(f'{key}/{k.upper()}', v)}"
            for k, v in value.items()
        ]
        lines.append(f"{key} = [\n" + ",\n".join(parts) + " ]")
    return "\n".join(lines) + "\n"


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip(self, newlines: bool = True) -> None:
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif c in " \t\r" or (newlines and c == "\n"):
                self.pos += 1
            else:
                return

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, c: str) -> None:
        self.skip()
        if self.peek() != c:
            raise TemplateSyntaxError(f"syntax error, expected {c!r} at offset {self.pos}")
        self.pos += 1

    def name(self) -> str:
        self.skip()
        m = _NAME.match(self.text, self.pos)
        if not m:
            raise TemplateSyntaxError(f"syntax error, expected a name at offset {self.pos}")
        self.pos = m.end()
        return m.group(0).upper()

    def value(self) -> str:
        self.skip(newlines=False)
        if self.peek() == '"':
            self.pos += 1
            out = []
            while True:
                if self.pos >= len(self.text):
                    raise TemplateSyntaxError("syntax error, unterminated string")
                c = self.text[self.pos]
                if c == "\\" and self.text.startswith('\\"', self.pos):
                    out.append('"')
                    self.pos += 2
                elif c == '"':
                    self.pos += 1
                    return "".join(out)
                else:
                    out.append(c)
                    self.pos += 1
        m = re.compile(r"[^\s=#,\[\]\"]*").match(self.text, self.pos)
        assert m is not None
        self.pos = m.end()
        return m.group(0)


def parseTemplate(text: str) -> list[tuple[str, str | dict[str, str]]]:
    """
    Parse template text as oned does: names upper-cased, C{\\"} unescaped,
    C{#} comments skipped; a vector becomes a L{dict} (a repeated key inside
    one vector keeps its last value).

    @raise TemplateSyntaxError: if it does not parse, or a value holds C{]]>}.
    """
    s = _Scanner(text)
    result: list[tuple[str, str | dict[str, str]]] = []
    while True:
        s.skip()
        if not s.peek():
            return result
        name = s.name()
        s.expect("=")
        s.skip(newlines=False)
        if s.peek() == "[":
            s.pos += 1
            vector: dict[str, str] = {}
            while True:
                key = s.name()
                s.expect("=")
                vector[key] = _checked(s.value())
                s.skip()
                if s.peek() == ",":
                    s.pos += 1
                    continue
                s.expect("]")
                break
            result.append((name, vector))
        else:
            result.append((name, _checked(s.value())))


def _checked(value: str) -> str:
    if "]]>" in value:
        raise TemplateSyntaxError("a value cannot contain ']]>'")
    return value
