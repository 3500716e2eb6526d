"""Mutation testing of corral's guards: flip a check, run the tests that should notice.

Each mutant changes one security- or integrity-relevant check of a listed
module (a comparison flipped, a ``not`` dropped, ``and``/``or`` swapped, a
``raise`` or an early ``return`` removed, a constant changed), is written
into a private copy of ``src/``, and the module's own tests run against it
(``-x``, one timeout per mutant).  A mutant the tests fail on is killed; one
they pass on survived, unless ``tools/mutants-equivalent.txt`` explains why
it cannot be told apart from the original.

Slow (minutes per module): run it on demand, not in every CI run::

    python tools/mutate.py                      # every listed module
    python tools/mutate.py --module resolver --limit 20
    python tools/mutate.py --list               # the mutants, not run
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "tools" / "mutants-equivalent.txt"

#: module (relative to src/corral) -> the tests that guard it.
TARGETS: dict[str, list[str]] = {
    "_model/permissions.py": ["tests/model/test_permissions.py",
                              "tests/runtime/test_broad_grants.py", "tests/services/test_state.py",
                              "tests/model/test_manifest.py", "tests/services/test_bus.py"],
    "_distribution/resolver.py": ["tests/distribution/test_resolver.py"],
    "_distribution/signing.py": ["tests/distribution/test_signing.py",
                                 "tests/distribution/test_trust.py"],
    "_distribution/trust.py": ["tests/distribution/test_trust.py",
                               "tests/distribution/test_signing.py",
                               "tests/distribution/test_installer_review.py"],
    "_disk/archive.py": ["tests/disk/test_archive.py", "tests/distribution/test_signing.py"],
    "_model/topics.py": ["tests/model/test_topics_payload.py", "tests/services/test_bus.py"],
    "_model/lifecycle.py": ["tests/model/test_lifecycle.py", "tests/runtime/test_host.py"],
    "_runtime/budgets.py": ["tests/runtime/test_budgets.py"],
    "_services/secrets.py": ["tests/services/test_secrets.py"],
    "_distribution/install/checks.py": ["tests/distribution/test_installer_review.py",
                                        "tests/distribution/test_installer_holds.py",
                                        "tests/distribution/test_installer.py"],
    "_distribution/install/update.py": ["tests/distribution/test_installer.py",
                                        "tests/distribution/test_installer_holds.py",
                                        "tests/distribution/test_installer_review.py"],
    "_model/manifest.py": ["tests/model/test_manifest.py", "tests/model/test_schema.py"],
    "_sandbox/spec.py": ["tests/sandbox/test_worker.py", "tests/sandbox/test_denials.py"],
    "_services/sandboxed.py": ["tests/sandbox/test_denials.py",
                               "tests/sandbox/test_comm_sandboxed.py",
                               "tests/runtime/test_host.py"],
}

_FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt,
    ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}


@dataclass
class Mutant:
    """One changed check: where, what it was, what it became, and the whole new module."""

    module: str
    line: int
    kind: str
    before: str
    after: str
    source: str

    @property
    def key(self) -> str:
        """How ``mutants-equivalent.txt`` names it (line numbers move; the text does not)."""
        return f"{self.module} | {self.before} | {self.after}"


def _guarded(tree: ast.Module) -> Iterator[tuple[ast.AST, str]]:
    """The nodes worth mutating: checks in conditions, asserts, returns and raises."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
            yield from _in_expr(node.test)
        elif isinstance(node, ast.Return) and node.value is not None:
            yield from _in_expr(node.value)
        elif isinstance(node, ast.comprehension):
            for cond in node.ifs:
                yield from _in_expr(cond)
        if isinstance(node, ast.If):
            for stmt in node.body:
                if isinstance(stmt, ast.Raise):
                    yield stmt, "remove raise"
                elif isinstance(stmt, ast.Return):
                    yield stmt, "remove early return"
                elif isinstance(stmt, ast.Continue):
                    yield stmt, "remove continue"


def _in_expr(expr: ast.AST) -> Iterator[tuple[ast.AST, str]]:
    for node in ast.walk(expr):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _FLIP:
            yield node, "flip comparison"
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, "remove not"
        elif isinstance(node, ast.BoolOp):
            yield node, "swap and/or"
        elif isinstance(node, ast.Constant) and type(node.value) in (int, bool):
            yield node, "change constant"


def _mutate(node: ast.AST, kind: str) -> ast.AST:
    """A changed copy of ``node``."""
    new = copy.deepcopy(node)
    if kind == "flip comparison":
        assert isinstance(new, ast.Compare)
        new.ops = [_FLIP[type(new.ops[0])]()]
    elif kind == "remove not":
        assert isinstance(new, ast.UnaryOp)
        return new.operand
    elif kind == "swap and/or":
        assert isinstance(new, ast.BoolOp)
        new.op = ast.Or() if isinstance(new.op, ast.And) else ast.And()
    elif kind == "change constant":
        assert isinstance(new, ast.Constant)
        new.value = (not new.value) if isinstance(new.value, bool) else new.value + 1
    else:  # remove raise / early return / continue
        return ast.copy_location(ast.Pass(), node)
    return new


class _Swap(ast.NodeTransformer):
    def __init__(self, target: ast.AST, replacement: ast.AST) -> None:
        self.target, self.replacement = target, replacement

    def visit(self, node: ast.AST) -> ast.AST:
        if node is self.target:
            return self.replacement
        return super().visit(node)


def _parent(tree: ast.AST, node: ast.AST) -> ast.AST | None:
    """The expression or statement that holds ``node`` directly."""
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            if child is node:
                return parent
    return None


def mutants(module: str) -> list[Mutant]:
    """Every mutant of ``module`` (a path relative to ``src/corral``), in source order."""
    path = ROOT / "src" / "corral" / module
    text = path.read_text()
    out: list[Mutant] = []
    seen: set[str] = set()
    for index, (node, kind) in enumerate(list(_guarded(ast.parse(text)))):
        tree = ast.parse(text)  # a fresh tree: find the same node by its walk position
        twin = list(_guarded(tree))[index][0]
        new = _mutate(twin, kind)
        before = ast.unparse(twin)
        after = ast.unparse(new)
        if before == after:
            continue
        # A bare constant says nothing: name it with the expression around it.
        shown = _parent(tree, twin) if kind == "change constant" else None
        if shown is not None:
            before = ast.unparse(shown)
        source = ast.unparse(ast.fix_missing_locations(_Swap(twin, new).visit(tree)))
        if shown is not None:
            after = ast.unparse(shown)
        if source in seen:
            continue
        seen.add(source)
        out.append(Mutant(module, getattr(node, "lineno", 0), kind, before.split("\n")[0],
                          after.split("\n")[0], source))
    return out


def equivalents() -> dict[str, str]:
    """``key -> reason`` from ``mutants-equivalent.txt`` (``module | before | after  # reason``)."""
    out: dict[str, str] = {}
    if EQUIVALENT.exists():
        for raw in EQUIVALENT.read_text().splitlines():
            if raw.strip() and not raw.startswith("#"):
                key, _, reason = raw.partition("  # ")
                out[key.strip()] = reason.strip()
    return out


def run_one(m: Mutant, tests: list[str], copy_root: Path, timeout: float) -> str:
    """``killed``, ``survived`` or ``timeout`` (counted as killed: the tests noticed)."""
    target = copy_root / "corral" / m.module
    original = target.read_text()
    target.write_text(m.source)
    env = {**os.environ, "PYTHONPATH": str(copy_root), "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
             "-p", "no:randomly", "--hypothesis-seed=0", *tests],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "timeout"
    finally:
        target.write_text(original)
    return "survived" if proc.returncode == 0 else "killed"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--module", action="append", default=[],
                    help="a listed module, or a part of its path (repeatable)")
    ap.add_argument("--limit", type=int, default=0, help="at most N mutants per module")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per mutant")
    ap.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    ap.add_argument("--json", metavar="FILE", help="write the results here too")
    args = ap.parse_args(argv)
    modules = [m for m in TARGETS if not args.module or any(p in m for p in args.module)]
    if not modules:
        ap.error(f"no listed module matches {args.module}; listed: {', '.join(TARGETS)}")
    known = equivalents()
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="corral-mutate-") as tmp:
        copy_root = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", copy_root,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for module in modules:
            found = mutants(module)
            if args.limit:
                found = found[: args.limit]
            counts = {"killed": 0, "survived": 0, "equivalent": 0}
            for m in found:
                where = f"src/corral/{m.module}:{m.line}"
                if args.list:
                    print(f"{where}  {m.kind}: {m.before}  ->  {m.after}")
                    continue
                started = time.monotonic()
                verdict = run_one(m, TARGETS[module], copy_root, args.timeout)
                if verdict == "survived" and m.key in known:
                    verdict = "equivalent"
                counts["killed" if verdict == "timeout" else verdict] += 1
                results.append({"module": m.module, "line": m.line, "kind": m.kind,
                                "before": m.before, "after": m.after, "verdict": verdict,
                                "reason": known.get(m.key, ""),
                                "seconds": round(time.monotonic() - started, 1)})
                print(f"{verdict.upper():10} {where}  {m.kind}: {m.before}  ->  {m.after}",
                      flush=True)
            if not args.list:
                print(f"== {module}: {len(found)} mutants, {counts['killed']} killed, "
                      f"{counts['survived']} survived, {counts['equivalent']} equivalent",
                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 1 if any(r["verdict"] == "survived" for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
