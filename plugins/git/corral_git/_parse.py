"""Parsing ``git`` output: pure functions over strings, tested without git."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["parse_log", "parse_numstat", "parse_status"]

US: Final = "\x1f"
RS: Final = "\x1e"


def parse_status(out: str, limit: int) -> dict[str, Any]:
    """Parse ``git status --porcelain=v2 --branch -z``.

    Staged means the index differs from ``HEAD`` (``X`` is not ``.``); modified
    means the work tree differs from the index (``Y`` is not ``.``).
    """
    branch: dict[str, Any] = {"head": None, "commit": None, "upstream": None,
                              "ahead": None, "behind": None}
    files: dict[str, list[str]] = {"staged": [], "modified": [], "untracked": [],
                                   "conflicted": []}
    counts = dict.fromkeys(files, 0)
    records = iter(out.split("\0"))
    for record in records:
        if not record:
            continue
        if record.startswith("# "):
            _branch_header(record[2:], branch)
            continue
        kind = record[0]
        if kind == "?":
            _add(files, counts, "untracked", record[2:], limit)
        elif kind in "12":
            fields = record.split(" ", 9 if kind == "2" else 8)
            xy, path = fields[1], fields[-1]
            if kind == "2":
                next(records, None)  # the rename's original path
            if xy[0] != ".":
                _add(files, counts, "staged", path, limit)
            if xy[1] != ".":
                _add(files, counts, "modified", path, limit)
        elif kind == "u":
            _add(files, counts, "conflicted", record.split(" ", 10)[-1], limit)
    return {
        "branch": branch["head"],
        "detached": branch["head"] is None and branch["commit"] is not None,
        "commit": branch["commit"],
        "upstream": branch["upstream"],
        "ahead": branch["ahead"],
        "behind": branch["behind"],
        **counts,
        "clean": not any(counts.values()),
        "files": files,
    }


def _branch_header(line: str, branch: dict[str, Any]) -> None:
    key, _, value = line.partition(" ")
    if key == "branch.oid":
        branch["commit"] = None if value == "(initial)" else value
    elif key == "branch.head":
        branch["head"] = None if value == "(detached)" else value
    elif key == "branch.upstream":
        branch["upstream"] = value
    elif key == "branch.ab":
        ahead, _, behind = value.partition(" ")
        branch["ahead"], branch["behind"] = int(ahead), abs(int(behind))


def _add(files: dict[str, list[str]], counts: dict[str, int], group: str, path: str,
         limit: int) -> None:
    counts[group] += 1
    if len(files[group]) < limit:
        files[group].append(path)


def parse_log(out: str) -> list[dict[str, str]]:
    """Parse records of ``%H US %h US %an US %ae US %aI US %s RS``."""
    commits = []
    for raw in out.split(RS):
        record = raw.strip("\n")
        if not record:
            continue
        full, short, name, email, date, subject = record.split(US, 5)
        commits.append({"hash": full, "short": short, "author": name, "email": email,
                        "date": date, "subject": subject})
    return commits


def parse_numstat(out: str) -> list[dict[str, Any]]:
    """Parse ``RS %an US %ae`` headers each followed by ``--numstat`` lines.

    Binary files (``-`` counts) add a file changed but no lines.  Authors are
    keyed by lower-cased e-mail; the most recent name spelling wins.
    """
    table: dict[str, dict[str, Any]] = {}
    for record in out.split(RS):
        if not record.strip():
            continue
        header, _, body = record.partition("\n")
        name, _, email = header.partition(US)
        row = table.setdefault(email.lower() or name, {
            "name": name, "email": email, "commits": 0, "added": 0, "removed": 0,
            "files_changed": 0,
        })
        row["commits"] += 1
        for line in body.splitlines():
            parts = line.split("\t", 2)
            if len(parts) != 3:
                continue
            added, removed, _ = parts
            row["files_changed"] += 1
            row["added"] += int(added) if added.isdigit() else 0
            row["removed"] += int(removed) if removed.isdigit() else 0
    return sorted(table.values(), key=lambda r: (-r["commits"], r["name"].lower(), r["email"]))
