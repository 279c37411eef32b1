"""
Configuration errors shared by the agent and the manager: every problem of
a file is collected and reported together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ConfigError", "ConfigProblem"]


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
