"""The two dialects of SQL the store speaks: SQLite (embedded, the default) and PostgreSQL (teams).

The schema is defined once, by ``TelemetryRow``'s fields (``core.row``); the migrations
(``store.schema``), the daily summaries (``store.rollup``) and the report's queries
(``store.query``) are written once and ask a :class:`Dialect` for the few constructs the two
engines spell differently: column types, integer truncation, a float cast, the sum of no rows,
glob matching, and how to list a table's columns. Placeholders are ``?`` in both: the PostgreSQL
reader converts them (``store.postgres``).

Pure module: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

__all__ = ["Dialect", "DialectName", "SQLITE", "POSTGRESQL", "dialect_of", "glob_regex"]

DialectName = Literal["sqlite", "postgresql"]

# SQLite's column types as TelemetryRow declares them -> PostgreSQL's (SQLite INTEGER is 64-bit, REAL is double).
_PG_TYPES: Final[dict[str, str]] = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "TEXT": "TEXT"}


@dataclass(frozen=True, slots=True)
class Dialect:
    name: DialectName

    @property
    def postgres(self) -> bool:
        return self.name == "postgresql"

    def column_type(self, decl: str) -> str:
        """A column declaration (``"INTEGER"``, ``"TEXT NOT NULL UNIQUE"``) in this dialect."""
        if not self.postgres:
            return decl
        head, _, rest = decl.partition(" ")
        return (_PG_TYPES.get(head.upper(), head) + (" " + rest if rest else "")).strip()

    def id_column(self) -> str:
        return "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY" if self.postgres else "id INTEGER PRIMARY KEY AUTOINCREMENT"

    def integer(self, expr: str) -> str:
        """``expr`` truncated toward zero to an integer (SQLite's CAST; PostgreSQL's CAST rounds)."""
        return f"CAST(TRUNC({expr}) AS BIGINT)" if self.postgres else f"CAST({expr} AS INTEGER)"

    def real(self, expr: str) -> str:
        return f"CAST({expr} AS DOUBLE PRECISION)" if self.postgres else f"CAST({expr} AS REAL)"

    def total(self, expr: str) -> str:
        """The sum of ``expr`` over a group, 0 for no rows or only NULLs (SQLite's TOTAL)."""
        return f"COALESCE(SUM({expr}), 0)" if self.postgres else f"TOTAL({expr})"

    def count_sum(self, expr: str) -> str:
        """The sum of an integer column as an integer (PostgreSQL's SUM of a bigint is numeric)."""
        return f"CAST(SUM({expr}) AS BIGINT)" if self.postgres else f"SUM({expr})"

    def glob(self, column: str) -> str:
        """A case-sensitive ``*`` / ``?`` / ``[...]`` match of ``column`` against a ``?`` parameter
        (the parameter goes through :meth:`glob_param`)."""
        return f"{column} ~ ?" if self.postgres else f"{column} GLOB ?"

    def glob_param(self, pattern: str) -> str:
        return glob_regex(pattern) if self.postgres else pattern

    def table_exists_sql(self) -> str:
        """One row when the table named by the ``?`` parameter exists."""
        if self.postgres:
            return "SELECT 1 WHERE to_regclass(?) IS NOT NULL"
        return "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"

    def columns_sql(self, table: str) -> str:
        """The column names of ``table`` in order (first column of each row)."""
        if self.postgres:
            return ("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                    f"AND table_name = '{table}' ORDER BY ordinal_position")
        return f"SELECT name FROM pragma_table_info('{table}')"


SQLITE: Final = Dialect("sqlite")
POSTGRESQL: Final = Dialect("postgresql")


class _HasDialect(Protocol):
    dialect: Dialect


def dialect_of(conn: Any) -> Dialect:
    """The dialect of an open connection: PostgreSQL readers say so, anything else is SQLite."""
    d = getattr(conn, "dialect", None)
    return d if isinstance(d, Dialect) else SQLITE


def glob_regex(pattern: str) -> str:
    """SQLite's GLOB ``pattern`` as an anchored POSIX regular expression (PostgreSQL's ``~``)."""
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(r"\[")
            else:
                body = pattern[i + 1:end]
                if body.startswith("^"):
                    body = "^" + body[1:]  # SQLite: [^...] negates, as in POSIX
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    return "".join(out)
