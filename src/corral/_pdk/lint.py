"""Static checks of a plugin's Python files: what the code does against what it was granted.

Everything here reads source with :mod:`ast`; no plugin code is ever imported
or run.  Each finding is an :class:`Issue` naming the rule, the file (relative
to the plugin directory), the line and column and, when a grant would make it
legitimate, the missing permission.  The rules (their ids are what SARIF and
``--json`` print; ``docs/pdk.md`` has the same table):

=========== ======= ===========================================================
rule        level   what
=========== ======= ===========================================================
CORRAL-E001 error   the manifest or a code target is invalid
CORRAL-E002 error   a Python file of the plugin does not parse
CORRAL-E003 error   an export or micro handler does not fit ``f(input, ctx)``, or a
                    micro handler's annotations do not fit its kind
CORRAL-E004 error   importing the plugin in its sandbox failed
CORRAL-S001 error   network use (socket, http.client, urllib, requests, httpx,
                    asyncio.open_connection...) without ``net-connect``
CORRAL-S002 error   processes (subprocess, os.system/exec*/spawn*, pty) without
                    ``spawn``, or a literal program not in the ``spawn`` grants
CORRAL-S003 warning ``eval``/``exec``/``compile`` of a computed string
CORRAL-S004 warning ``__import__``/``importlib.import_module`` of a computed name
CORRAL-S005 error   an obfuscated payload: decoded/decompressed data fed to
                    exec/eval/compile/marshal.loads/pickle.loads
CORRAL-S006 warning a very long high-entropy (encoded) string literal
CORRAL-S007 warning native code through ``ctypes`` or ``cffi``
CORRAL-S008 error   a write to a literal absolute path outside ``fs-write``
CORRAL-S009 warning an environment variable read that ``env`` does not grant
CORRAL-P001 warning importing the plugin takes longer than 200 ms
CORRAL-P002 warning the plugin is larger than 5 MB
CORRAL-P003 warning the plugin has more than 1000 files
CORRAL-W001 warning a manifest warning (broad grant, isolation none, ...)
CORRAL-W002 warning the sandbox import was skipped (and why)
CORRAL-N001 note    a suggestion (description, tags, README, self-test, reasons)
=========== ======= ===========================================================
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, final

from corral._disk.targets import handler_annotations
from corral._errors import InvalidPluginError
from corral._model.micro import check_annotated_shape

if TYPE_CHECKING:
    from corral._model.manifest import Manifest

__all__ = ["RULES", "Issue", "Rule", "check_signatures", "lint_plugin", "python_files"]

Level = Literal["error", "warning", "note"]


@final
@dataclass(frozen=True, slots=True)
class Rule:
    """One check: its id, the report section it lands in, its level and a one-line summary."""

    id: str
    name: str
    section: Literal["errors", "warnings", "security", "performance", "suggestions"]
    level: Level
    summary: str


def _rules(*rules: Rule) -> dict[str, Rule]:
    return {r.id: r for r in rules}


#: Every rule, by id (the table in the module docstring, as data).
RULES: Final = _rules(
    Rule("CORRAL-E001", "invalid-manifest", "errors", "error",
         "The manifest or one of its code targets is invalid."),
    Rule("CORRAL-E002", "syntax-error", "errors", "error",
         "A Python file of the plugin does not parse."),
    Rule("CORRAL-E003", "bad-export-signature", "errors", "error",
         "An export or micro handler is not a function f(input, ctx), or a micro "
         "handler's annotations do not fit its kind."),
    Rule("CORRAL-E004", "import-failed", "errors", "error",
         "Importing the plugin inside its sandbox failed."),
    Rule("CORRAL-S001", "network-without-grant", "security", "error",
         "The code uses the network but net-connect grants nothing."),
    Rule("CORRAL-S002", "spawn-without-grant", "security", "error",
         "The code starts processes that the spawn grants do not cover."),
    Rule("CORRAL-S003", "dynamic-code", "security", "warning",
         "eval, exec or compile of a computed string."),
    Rule("CORRAL-S004", "dynamic-import", "security", "warning",
         "An import of a computed module name."),
    Rule("CORRAL-S005", "obfuscated-payload", "security", "error",
         "Encoded or compressed data decoded and executed or unpickled."),
    Rule("CORRAL-S006", "encoded-literal", "security", "warning",
         "A very long high-entropy string literal (an encoded payload?)."),
    Rule("CORRAL-S007", "native-code", "security", "warning",
         "Native code through ctypes or cffi."),
    Rule("CORRAL-S008", "write-outside-grants", "security", "error",
         "A write to a literal path that fs-write does not grant."),
    Rule("CORRAL-S009", "env-without-grant", "security", "warning",
         "A read of an environment variable that env does not grant."),
    Rule("CORRAL-P001", "slow-import", "performance", "warning",
         "Importing the plugin takes longer than the threshold."),
    Rule("CORRAL-P002", "large-plugin", "performance", "warning",
         "The plugin is larger than the threshold."),
    Rule("CORRAL-P003", "many-files", "performance", "warning",
         "The plugin has more files than the threshold."),
    Rule("CORRAL-W001", "manifest-warning", "warnings", "warning",
         "Something in the manifest is risky or missing."),
    Rule("CORRAL-W002", "sandbox-import-skipped", "warnings", "warning",
         "The plugin could not be imported in its sandbox on this machine."),
    Rule("CORRAL-N001", "suggestion", "suggestions", "note",
         "Something that would make the plugin easier to trust or use."),
)


@final
@dataclass(frozen=True, slots=True)
class Issue:
    """One finding: ``file`` is relative to the plugin directory (``None``: the plugin)."""

    rule: str
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    permission: str | None = None
    level: Level | None = None  # None: the rule's own level

    def to_dict(self) -> dict[str, Any]:
        """JSON: ``{"rule", "level", "message", "file", "line", "column", "permission"?}``."""
        out: dict[str, Any] = {
            "rule": self.rule,
            "level": self.level or RULES[self.rule].level,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "column": self.column,
        }
        if self.permission is not None:
            out["permission"] = self.permission
        return out


# -- what counts as what ------------------------------------------------------------

_NET_MODULES: Final = frozenset({
    "socket", "http.client", "urllib.request", "urllib3", "requests", "httpx", "aiohttp",
    "ftplib", "smtplib", "poplib", "imaplib", "telnetlib", "xmlrpc.client", "websocket",
    "websockets", "socketserver", "http.server", "asyncssh", "paramiko",
})
_NET_CALLS: Final = frozenset({
    "asyncio.open_connection", "asyncio.open_unix_connection", "asyncio.start_server",
    "urllib.request.urlopen",
})
_SPAWN_MODULES: Final = frozenset({"subprocess", "pty"})
_SPAWN_CALLS: Final = frozenset({
    "os.system", "os.popen", "os.posix_spawn", "os.posix_spawnp", "os.forkpty",
    "asyncio.create_subprocess_exec", "asyncio.create_subprocess_shell",
    *(f"os.exec{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")),
    *(f"os.spawn{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")),
})
#: subprocess functions whose first argument names the program.
_PROGRAM_CALLS: Final = frozenset({
    "subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
    "subprocess.Popen", "asyncio.create_subprocess_exec",
})
_NATIVE_MODULES: Final = frozenset({"ctypes", "cffi", "_ctypes"})
_CODE_BUILTINS: Final = frozenset({"eval", "exec", "compile"})
_SINKS: Final = frozenset({
    "eval", "exec", "compile", "marshal.loads", "pickle.loads", "cPickle.loads",
    "zlib.decompress", "bz2.decompress", "lzma.decompress", "types.FunctionType",
})
_DECODERS: Final = frozenset({
    "base64.b64decode", "base64.b32decode", "base64.b16decode", "base64.b85decode",
    "base64.a85decode", "base64.urlsafe_b64decode", "base64.decodebytes",
    "binascii.unhexlify", "binascii.a2b_base64", "binascii.a2b_hex", "bytes.fromhex",
    "codecs.decode", "zlib.decompress", "bz2.decompress", "lzma.decompress",
    "marshal.loads",
})
_ENCODED_RE: Final = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$|^(?:\\x[0-9a-fA-F]{2})+$")
_HEX_RE: Final = re.compile(r"^[0-9a-fA-F\s]+$")
_WRITE_MODES: Final = ("w", "a", "x", "+")
ENCODED_MIN: Final = 64  #: a literal this long in an encoding alphabet can be a payload
LONG_LITERAL: Final = 200  #: a literal this long with high entropy is flagged (S006)
ENTROPY_BITS: Final = 4.5  #: bits per character above which a literal looks encoded


def python_files(plugin_dir: Path) -> list[Path]:
    """The plugin's ``.py`` files, sorted, skipping hidden and ``__pycache__`` folders."""
    out = []
    for path in sorted(plugin_dir.rglob("*.py")):
        rel = path.relative_to(plugin_dir).parts
        if any(p.startswith(".") or p == "__pycache__" for p in rel[:-1]):
            continue
        if path.is_file() and not path.is_symlink():
            out.append(path)
    return out


def _entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _looks_encoded(value: object) -> bool:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or len(value) < ENCODED_MIN:
        return False
    return bool(_ENCODED_RE.match(value))


class _Visitor(ast.NodeVisitor):
    """Walks one module, resolving imported names to dotted names, collecting issues."""

    def __init__(self, manifest: Manifest, rel: str) -> None:
        self.manifest = manifest
        self.perms = manifest.permissions
        self.rel = rel
        self.aliases: dict[str, str] = {}
        self.issues: list[Issue] = []
        self.docstrings: set[int] = set()

    # -- helpers

    def add(self, rule: str, node: ast.AST, message: str, permission: str | None = None) -> None:
        self.issues.append(Issue(
            rule, f"{self.rel}:{getattr(node, 'lineno', 0)}: {message}", self.rel,
            getattr(node, "lineno", None), getattr(node, "col_offset", -1) + 1 or None,
            permission,
        ))

    def dotted(self, node: ast.AST) -> str | None:
        """``a.b.c`` with the head resolved through imports (``sp.run`` -> ``subprocess.run``)."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Call):  # bytes.fromhex(...) etc. on a call: keep the attr
            return None
        if not isinstance(node, ast.Name):
            return None
        head = self.aliases.get(node.id, node.id)
        return ".".join([head, *reversed(parts)])

    def module_used(self, module: str, node: ast.AST, how: str) -> None:
        top = module.split(".", maxsplit=1)[0]
        for name in (module, top, ".".join(module.split(".")[:2])):
            if name in _NET_MODULES and not self.perms.net_connect:
                self.add("CORRAL-S001", node, f"{how} {module} but permissions.net-connect "
                         "grants nothing", "net-connect")
                return
            if name in _SPAWN_MODULES and not self.perms.spawn:
                self.add("CORRAL-S002", node, f"{how} {module} but permissions.spawn grants "
                         "nothing", "spawn")
                return
            if name in _NATIVE_MODULES:
                self.add("CORRAL-S007", node, f"{how} {module}: native code escapes review "
                         "and runs with all of the worker's rights")
                return

    # -- imports

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                head = alias.name.split(".")[0]
                self.aliases[head] = head
            self.module_used(alias.name, node, "imports")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return
        reported = False
        for alias in node.names:
            full = f"{node.module}.{alias.name}"
            self.aliases[alias.asname or alias.name] = full
            if not reported and (full in _NET_MODULES or full in _SPAWN_MODULES):
                self.module_used(full, node, "imports")
                reported = True
        if not reported:
            self.module_used(node.module, node, "imports from")
            # from os import system: the call is reported where it happens

    # -- calls

    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func)
        if name is not None:
            self.check_call(name, node)
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in ("write_text", "write_bytes", "open")
            and (func.attr != "open" or self.write_mode(node, 0))
        ):
            self.check_path_write(node)
        self.generic_visit(node)

    def check_call(self, name: str, node: ast.Call) -> None:
        first = node.args[0] if node.args else None
        literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
        if name in _NET_CALLS and not self.perms.net_connect:
            self.add("CORRAL-S001", node, f"calls {name}() but permissions.net-connect grants "
                     "nothing", "net-connect")
        if name in _SPAWN_CALLS and not self.perms.spawn:
            self.add("CORRAL-S002", node, f"calls {name}() but permissions.spawn grants "
                     "nothing", "spawn")
        if name in _PROGRAM_CALLS and self.perms.spawn:
            program = self.program_of(first, name)
            if program is not None and program not in self.perms.spawn and (
                Path(program).name not in self.perms.spawn
            ):
                self.add("CORRAL-S002", node, f"runs {program!r}, which permissions.spawn "
                         f"({', '.join(self.perms.spawn)}) does not grant", f"spawn:{program}")
        if name in _SINKS and node.args and self.obfuscated(node.args[0]):
            self.add("CORRAL-S005", node, f"{name}() of decoded or compressed data: an "
                     "obfuscated payload hides what the plugin really runs")
        elif name in _CODE_BUILTINS and first is not None and not literal:
            self.add("CORRAL-S003", node, f"{name}() of a computed string: the code it runs "
                     "cannot be reviewed")
        if name in ("__import__", "importlib.import_module", "importlib.__import__"):
            if literal:
                assert isinstance(first, ast.Constant)
                self.module_used(str(first.value), node, f"{name}()s")
            elif first is not None:
                self.add("CORRAL-S004", node, f"{name}() of a computed module name: what it "
                         "imports cannot be reviewed")
        if name in ("open", "io.open", "builtins.open", "os.open") and node.args and (
            self.write_mode(node, 1)
        ):
            self.check_write_target(node.args[0], node)
        if name in ("os.getenv", "os.environ.get"):
            self.check_env(first, node)

    def program_of(self, arg: ast.expr | None, name: str) -> str | None:
        if name == "asyncio.create_subprocess_exec" or isinstance(arg, ast.Constant):
            value = arg.value if isinstance(arg, ast.Constant) else None
            if isinstance(value, str):
                return value.split()[0] if value.split() else None
            return None
        if isinstance(arg, ast.List | ast.Tuple) and arg.elts:
            head = arg.elts[0]
            if isinstance(head, ast.Constant) and isinstance(head.value, str):
                return head.value
        return None

    def obfuscated(self, node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                name = self.dotted(sub.func)
                if name in _DECODERS:
                    return True
                if isinstance(sub.func, ast.Attribute) and sub.func.attr in ("fromhex", "decode"):
                    target = sub.func.value
                    if sub.func.attr == "fromhex" or (
                        isinstance(target, ast.Constant) and _looks_encoded(target.value)
                    ):
                        return True
            elif isinstance(sub, ast.Constant) and _looks_encoded(sub.value):
                return True
        return False

    def write_mode(self, node: ast.Call, index: int) -> bool:
        """Whether the literal mode argument (position ``index`` or ``mode=``) writes."""
        mode: object = "r"
        if len(node.args) > index and isinstance(node.args[index], ast.Constant):
            mode = node.args[index].value  # type: ignore[attr-defined]
        for kw in node.keywords:
            if kw.arg in ("mode", "flags") and isinstance(kw.value, ast.Constant):
                mode = kw.value.value
        if isinstance(mode, int):  # os.open flags: anything but O_RDONLY (0)
            return mode != 0
        if index < len(node.args) and isinstance(node.args[index], ast.Attribute | ast.BinOp):
            return True  # os.O_WRONLY | os.O_CREAT ...
        return isinstance(mode, str) and any(m in mode for m in _WRITE_MODES)

    def check_path_write(self, node: ast.Call) -> None:
        func = node.func
        assert isinstance(func, ast.Attribute)
        target = func.value
        if isinstance(target, ast.Call) and self.dotted(target.func) in (
            "pathlib.Path", "Path", "pathlib.PurePath"
        ) and target.args:
            self.check_write_target(target.args[0], node)

    def check_write_target(self, arg: ast.expr, node: ast.AST) -> None:
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            return
        path = arg.value
        if not path.startswith("/"):
            return  # relative: inside the plugin's own working directory
        for grant in self.perms.fs_write:
            if not grant.startswith("{") and (
                path == grant or path.startswith(grant.rstrip("/") + "/")
            ):
                return
        self.add("CORRAL-S008", node, f"writes to {path!r}, outside what permissions.fs-write "
                 f"grants ({', '.join(self.perms.fs_write) or 'nothing'})", f"fs-write:{path}")

    def check_env(self, arg: ast.expr | None, node: ast.AST) -> None:
        if (
            isinstance(arg, ast.Constant)
            and isinstance(arg.value, str)
            and arg.value not in self.perms.env
        ):
            self.add("CORRAL-S009", node, f"reads the environment variable {arg.value!r}, "
                         "which permissions.env does not grant (it will be unset)",
                         f"env:{arg.value}")

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.ctx, ast.Load) and self.dotted(node.value) == "os.environ":
            self.check_env(node.slice, node)
        self.generic_visit(node)

    # -- literals

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant):  # docstrings and bare strings
            self.docstrings.add(id(node.value))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if id(node) in self.docstrings or not isinstance(value, str | bytes):
            return
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if len(text) < LONG_LITERAL or " " in text.strip():
            return
        if (_HEX_RE.match(text) and len(text) >= 2 * LONG_LITERAL and _entropy(text) >= 3) or (
            _entropy(text) >= ENTROPY_BITS
        ):
            self.add("CORRAL-S006", node, f"a {len(text)}-character high-entropy string "
                     "literal: if it is an encoded payload, ship readable code instead")


def lint_plugin(plugin_dir: Path, manifest: Manifest) -> list[Issue]:
    """Every static finding in the plugin's Python files (syntax errors as CORRAL-E002)."""
    issues: list[Issue] = []
    for path in python_files(plugin_dir):
        rel = path.relative_to(plugin_dir).as_posix()
        tree = _parse(path, rel, issues)
        if tree is None:
            continue
        visitor = _Visitor(manifest, rel)
        visitor.visit(tree)
        issues.extend(visitor.issues)
    return issues


def _parse(path: Path, rel: str, issues: list[Issue]) -> ast.Module | None:
    try:
        return ast.parse(path.read_bytes(), filename=rel)
    except SyntaxError as exc:
        issues.append(Issue("CORRAL-E002", f"{rel}:{exc.lineno}: syntax error: {exc.msg}",
                            rel, exc.lineno, exc.offset))
    except (OSError, ValueError) as exc:
        issues.append(Issue("CORRAL-E002", f"{rel}: cannot read: {exc}", rel))
    return None


# -- export signatures -----------------------------------------------------------------


def _targets(manifest: Manifest) -> Iterator[tuple[str, str]]:
    for name, target in manifest.exports.items():
        yield f"export {name!r}", target
    for micro in manifest.micro:
        yield f"micro-plugin {micro.id!r}", micro.handler


def find_definition(plugin_dir: Path, target: str) -> tuple[str, ast.AST | None] | None:
    """``(relative file, top-level node defining the target)``; ``None``: no module file."""
    from corral._disk.targets import module_file

    module, _, attr = target.partition(":")
    path = module_file(plugin_dir, module)
    if path is None:
        return None
    rel = path.relative_to(plugin_dir).as_posix()
    try:
        tree = ast.parse(path.read_bytes(), filename=rel)
    except (SyntaxError, OSError, ValueError):
        return rel, None
    node: ast.AST | None = None
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if stmt.name == attr:
                node = stmt
        elif (isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == attr for t in stmt.targets
        )) or (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and (
            stmt.target.id == attr
        )):
            node = stmt
    return rel, node


def _arity_problem(args: ast.arguments) -> str | None:
    positional = [*args.posonlyargs, *args.args]
    required = len(positional) - len(args.defaults)
    if len(positional) < 2 and args.vararg is None:
        return f"takes {len(positional)} positional parameter(s), needs 2 (input, ctx)"
    if required > 2:
        return f"requires {required} positional parameters; only (input, ctx) are passed"
    missing = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None]
    if missing:
        return f"requires keyword-only parameter(s) {', '.join(missing)}, which are never passed"
    return None


def check_signatures(plugin_dir: Path, manifest: Manifest) -> list[Issue]:
    """CORRAL-E003 for each export or micro handler that is not a function ``f(input, ctx)``."""
    issues: list[Issue] = []
    for what, target in _targets(manifest):
        found = find_definition(plugin_dir, target)
        if found is None or found[1] is None:
            continue  # a missing module or a syntax error is reported elsewhere
        rel, node = found
        assert node is not None
        line = getattr(node, "lineno", None)
        where = f"{rel}:{line}"
        problem: str | None = None
        if isinstance(node, ast.ClassDef):
            problem = "is a class; exports are functions f(input, ctx)"
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            problem = _arity_problem(node.args)
        else:
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            if isinstance(value, ast.Lambda):
                problem = _arity_problem(value.args)
            elif isinstance(value, ast.Constant | ast.List | ast.Dict | ast.Set | ast.Tuple
                            | ast.JoinedStr | ast.ListComp | ast.DictComp):
                problem = "is not callable (a literal value)"
        if problem:
            issues.append(Issue("CORRAL-E003", f"{where}: {what} ({target}) {problem}", rel,
                                line, getattr(node, "col_offset", 0) + 1))
    issues.extend(_micro_shape_issues(plugin_dir, manifest))
    return issues


def _micro_shapes(plugin_dir: Path, manifest: Manifest) -> Iterator[tuple[str, str]]:
    """``(target, problem)`` for each micro handler whose annotations do not fit its kind."""
    for m in manifest.micro:
        found = handler_annotations(plugin_dir, m.handler)
        if found is None:
            continue
        try:
            check_annotated_shape(m.type, m.id, *found)
        except InvalidPluginError as exc:
            yield m.handler, exc.message


def _micro_shape_issues(plugin_dir: Path, manifest: Manifest) -> list[Issue]:
    issues: list[Issue] = []
    for target, problem in _micro_shapes(plugin_dir, manifest):
        found = find_definition(plugin_dir, target)
        rel, node = found if found is not None else (None, None)
        line = getattr(node, "lineno", None)
        issues.append(Issue("CORRAL-E003", f"{rel}:{line}: {problem}", rel, line,
                            getattr(node, "col_offset", 0) + 1))
    return issues
