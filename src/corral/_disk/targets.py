"""Export targets on disk: which module each ``entry``, export and handler names, and proof
that the plugin's source defines it, read with ``ast`` and never imported.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

from corral._errors import InvalidPluginError

if TYPE_CHECKING:
    from corral._model.manifest import Manifest

__all__ = ["check_targets", "handler_annotations", "module_file", "targets_of"]


def targets_of(manifest: Manifest) -> list[tuple[str, str]]:
    """Every code target of a manifest as ``(key path, "module:attr")``."""
    out: list[tuple[str, str]] = []
    if manifest.entry:
        out.append(("plugin.entry", manifest.entry))
    out.extend((f"exports.{name}", target) for name, target in manifest.exports.items())
    out.extend((f"micro[{i}].handler", m.handler) for i, m in enumerate(manifest.micro))
    return out


def module_file(plugin_dir: Path, module: str) -> Path | None:
    """The source file of dotted ``module`` under ``plugin_dir``, or ``None``."""
    base = plugin_dir.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defined_names(tree: ast.Module) -> tuple[set[str], bool]:
    names: set[str] = set()
    dynamic = False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(
            node.target, ast.Name
        ):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    dynamic = True
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.If | ast.Try | ast.With):
            dynamic = True  # conditional definitions: trust the import-time check instead
    if "__getattr__" in names:
        dynamic = True
    return names, dynamic


def check_targets(plugin_dir: Path, manifest: Manifest) -> None:
    """Raise :class:`InvalidPluginError` naming the key and file of the first bad target."""
    root = plugin_dir.resolve()
    parsed: dict[Path, tuple[set[str], bool]] = {}
    for key, target in targets_of(manifest):
        module, _, attr = target.partition(":")
        path = module_file(plugin_dir, module)
        if path is None:
            raise InvalidPluginError(
                f"{key}: module {module!r} not found in {plugin_dir} "
                f"(looked for {module.replace('.', '/')}.py and "
                f"{module.replace('.', '/')}/__init__.py)",
                plugin_id=manifest.id,
                key=key,
                target=target,
            )
        real = path.resolve()
        if not real.is_relative_to(root):
            raise InvalidPluginError(
                f"{key}: module {module!r} resolves to {real}, outside the plugin directory",
                plugin_id=manifest.id,
                key=key,
                target=target,
            )
        if real not in parsed:
            try:
                source = real.read_bytes()
                tree = ast.parse(source, filename=str(path))
            except SyntaxError as exc:
                raise InvalidPluginError(
                    f"{key}: syntax error in {path}:{exc.lineno}:{exc.offset}: {exc.msg}",
                    plugin_id=manifest.id,
                    key=key,
                    file=str(path),
                    line=exc.lineno,
                ) from None
            except (OSError, ValueError) as exc:
                raise InvalidPluginError(
                    f"{key}: cannot read {path}: {exc}", plugin_id=manifest.id, key=key
                ) from None
            parsed[real] = _defined_names(tree)
        names, dynamic = parsed[real]
        head = attr.split(".")[0]
        if not dynamic and head not in names:
            raise InvalidPluginError(
                f"{key}: {module} defines no {head!r} ({path})",
                plugin_id=manifest.id,
                key=key,
                target=target,
            )


def handler_annotations(plugin_dir: Path, target: str) -> tuple[str | None, str | None] | None:
    """The annotations of a handler's input and result, as written in its source.

    ``None`` when ``target`` is not a top-level function of a readable module (a
    class, an assignment, a missing file: what the code holds is found on load).
    """
    module, _, attr = target.partition(":")
    path = module_file(plugin_dir, module)
    if path is None or "." in attr:
        return None
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, OSError, ValueError):
        return None
    found: ast.FunctionDef | ast.AsyncFunctionDef | None = None
    for node in tree.body:  # the last top-level definition wins, as at import
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == attr:
                found = None if isinstance(node, ast.ClassDef) else node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
                found = None
    if found is None:
        return None
    params = [*found.args.posonlyargs, *found.args.args]
    first = params[0].annotation if params else None
    return (ast.unparse(first) if first is not None else None,
            ast.unparse(found.returns) if found.returns is not None else None)
