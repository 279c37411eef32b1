"""
Configuration errors shared by the agent and the manager: every problem of
a file is collected and reported together.
"""

from __future__ import annotations

import configparser
from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = ["ConfigError", "ConfigProblem", "readConfigText", "readIni"]


@dataclass(frozen=True)
class ConfigProblem:
    """
    One problem in the configuration file.
    """

    section: str | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = ""
        if self.section is not None:
            where = f"[{self.section}]"
            if self.key is not None:
                where += f" {self.key}"
            where += ": "
        return where + self.message


class ConfigError(Exception):
    """
    The configuration file has problems; all of them are in C{problems}.
    """

    def __init__(self, source: str, problems: Sequence[ConfigProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = [f"{source}: {len(self.problems)} configuration problem(s):"]
        lines += [f"  {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


def readIni(
    text: str, source: str, sections: Collection[str]
) -> tuple[configparser.ConfigParser, list[ConfigProblem]]:
    """
    Parse INI text (no interpolation, case-sensitive keys).

    @param sections: the known sections, in the order to name them.
    @return: the parser, and the problems found so far (a DEFAULT section,
        unknown sections).
    @raise ConfigError: the text cannot be parsed at all.
    """
    parser = configparser.ConfigParser(interpolation=None, strict=True, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError(source, [ConfigProblem(None, None, f"cannot parse: {e.message}")])
    problems: list[ConfigProblem] = []
    if parser.defaults():
        problems.append(ConfigProblem(
            "DEFAULT", None, "the DEFAULT section is not used; move its keys to a section"))
    for section in parser.sections():
        if section not in sections:
            problems.append(
                ConfigProblem(section, None, "unknown section; known: " + ", ".join(sections)))
    return parser, problems


def readConfigText(path: str) -> str:
    """
    The text of a configuration file.

    @raise ConfigError: it cannot be read (one problem).
    """
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, [ConfigProblem(None, None, f"cannot read: {e}")]) from None
