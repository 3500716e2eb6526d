"""Reading co-usage files: real sets of plugins that projects use together (TSV).

Columns ``repo``, ``family``, ``source_path``, ``plugins`` (comma separated package
names).  Names become ``pypi.<normalised name>`` ids when seeded; the family label is
folded onto the registry's ecosystem tags (``types`` -> ``typing``).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from corral._errors import NotFoundError, UsageError

from .._names import ecosystem_of, normalise_name

__all__ = ["CoUsageRow", "family_tag", "read_cousage"]

#: A row may name at most this many plugins (a larger one is not a project's set).
MAX_PLUGINS = 200


@dataclass(frozen=True, slots=True)
class CoUsageRow:
    """One project's set: where it came from, its family tag and its plugin names."""

    repo: str
    family: str | None
    source_path: str
    plugins: tuple[str, ...]


def family_tag(label: str) -> str | None:
    """The ecosystem tag a family label stands for (``types`` -> ``typing``)."""
    norm = normalise_name(label)
    if not norm:
        return None
    eco = ecosystem_of(norm + "-x")
    return eco[0] if eco else norm


def read_cousage(path: Path) -> list[CoUsageRow]:
    """The rows of a co-usage TSV; a malformed row is a :class:`UsageError` naming its line."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such co-usage file", path=str(path))
    csv.field_size_limit(sys.maxsize)
    rows: list[CoUsageRow] = []
    with path.open(encoding="utf-8", newline="") as fp:
        reader = csv.DictReader(fp, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"repo", "family", "plugins"} - set(reader.fieldnames or ())
        if missing:
            raise UsageError(f"{path}: missing columns {', '.join(sorted(missing))}",
                             path=str(path))
        for line, row in enumerate(reader, start=2):
            names = [normalise_name(n) for n in (row.get("plugins") or "").split(",")]
            names = list(dict.fromkeys(n for n in names if n))
            if len(names) > MAX_PLUGINS:
                raise UsageError(f"{path}:{line}: {len(names)} plugins in one set "
                                 f"(at most {MAX_PLUGINS})", path=str(path), line=line)
            rows.append(CoUsageRow(
                repo=(row.get("repo") or "").strip(),
                family=family_tag(row.get("family") or ""),
                source_path=(row.get("source_path") or "").strip(),
                plugins=tuple(names),
            ))
    return rows
