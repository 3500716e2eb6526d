"""``corral new``: scaffold a plugin from one of the templates in ``corral/_templates``.

A template is a folder of ``*.tmpl`` files whose ``{{name}}`` markers are
replaced by the plugin's values; a path part ``__package__`` becomes the
plugin's Python package.  The plugin is built in a temporary sibling of the
target and renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, final

from corral._errors import UsageError

__all__ = [
    "DEFAULT_TEMPLATE",
    "TEMPLATES",
    "NewPlugin",
    "ask_missing",
    "create_plugin",
    "package_name",
    "plugin_id_for",
    "slugify",
]

#: Template name -> what it scaffolds (the order is the order of the prompt).
TEMPLATES: Final[Mapping[str, str]] = {
    "command": "exports the host calls by name (greet, head of a workspace file)",
    "micro": "a set of micro-plugins: validator, transformer, formatter, and a pipeline",
    "listener": "an event listener counting events into shared state",
    "full": "lifecycle hooks, a config schema, data files, events and state",
}
DEFAULT_TEMPLATE: Final = "command"
ISOLATIONS: Final = ("strict", "limited", "none")
_TEMPLATE_ROOT: Final = Path(__file__).parent / "templates"
_MARKER: Final = re.compile(r"\{\{([a-z_]+)\}\}")
_PACKAGE_PART: Final = "__package__"
_DOC_WIDTH: Final = 88  # ruff's and black's default line length


def slugify(name: str) -> str:
    """A lowercase ASCII slug of a human name: ``"Hello World!"`` -> ``"hello-world"``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")


def plugin_id_for(name: str, plugin_id: str | None = None) -> str:
    """The plugin id: ``plugin_id`` if given, ``name`` if it is an id, else ``local.<slug>``.

    ``"acme.hello"`` stays ``acme.hello``; ``"Acme Hello"`` becomes ``local.acme-hello``.
    """
    from corral._model.manifest import check_id

    if plugin_id is None:
        if "." in name and name == name.strip().lower() and " " not in name:
            plugin_id = ".".join(slugify(part) for part in name.split("."))
        else:
            slug = slugify(name)
            if not slug:
                raise UsageError(
                    f"cannot make a plugin id from {name!r}; pass --id namespace.name"
                )
            plugin_id = f"local.{slug}"
    try:
        return check_id(plugin_id)
    except Exception as exc:
        raise UsageError(f"{exc}; pass --id namespace.name", id=plugin_id) from None


def package_name(plugin_id: str) -> str:
    """The plugin's Python package: ``acme.git-stats`` -> ``acme_git_stats``."""
    name = re.sub(r"[^a-z0-9_]", "_", plugin_id)
    return name if name[0].isalpha() else f"p_{name}"


@final
@dataclass(frozen=True, slots=True)
class NewPlugin:
    """What :func:`create_plugin` wrote."""

    path: Path
    id: str
    name: str
    template: str
    package: str
    isolation: str
    files: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        """The JSON document of ``corral new --json``."""
        return {
            "path": str(self.path),
            "id": self.id,
            "name": self.name,
            "template": self.template,
            "package": self.package,
            "isolation": self.isolation,
            "files": list(self.files),
        }


def _toml_string(value: str) -> str:
    """A TOML basic string (JSON string escapes are valid TOML ones)."""
    import json

    return json.dumps(value, ensure_ascii=False)


def _doc_text(value: str) -> str:
    """Text safe inside a triple-quoted docstring and on one line."""
    return " ".join(value.replace("\\", "/").replace('"""', "'''").split())


def _package_doc(name: str, description: str) -> str:
    """The text of the package docstring, within 88 columns (the linters' default).

    ``name: description`` if it fits on one line with its quotes, else the name,
    a blank line and the description wrapped (also when it ends with a quote).
    """
    import textwrap

    summary = f"{name}: {description}"
    if len(summary) + 6 <= _DOC_WIDTH and not summary.endswith('"'):
        return summary
    body = textwrap.fill(
        description, _DOC_WIDTH, break_long_words=False, break_on_hyphens=False
    )
    return f"{name.rstrip('.')}.\n\n{body}\n"


def _default_author() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "Plugin Author"


def ask_missing(values: dict[str, str | None], ask: Callable[[str, str], str]) -> None:
    """Fill the ``None`` entries of ``values`` by asking ``ask(question, default)``.

    Keys: ``template``, ``id``, ``description``, ``author``, ``email``, ``isolation``
    (``name`` must be set).  An empty answer takes the default.
    """
    name = values["name"] or ""
    if values.get("template") is None:
        choices = ", ".join(TEMPLATES)
        values["template"] = ask(f"template ({choices})", DEFAULT_TEMPLATE)
    if values.get("id") is None:
        values["id"] = ask("plugin id", plugin_id_for(name))
    if values.get("description") is None:
        values["description"] = ask("description", f"{name}: a corral plugin")
    if values.get("author") is None:
        values["author"] = ask("author", _default_author())
    if values.get("email") is None:
        values["email"] = ask("author email (optional)", "") or None
    if values.get("isolation") is None:
        values["isolation"] = ask(f"isolation ({', '.join(ISOLATIONS)})", "strict")


def create_plugin(
    name: str,
    *,
    template: str = DEFAULT_TEMPLATE,
    plugin_id: str | None = None,
    directory: str | os.PathLike[str] | None = None,
    author: str | None = None,
    email: str | None = None,
    description: str | None = None,
    isolation: str = "strict",
    force: bool = False,
) -> NewPlugin:
    """Write a new plugin from ``template`` and return what was written.

    ``directory`` defaults to ``./<last part of the id>``.  A directory that
    exists and is not empty is refused unless ``force`` (then it is replaced).

    Raises:
        UsageError: an unknown template or isolation, a bad id, or a non-empty directory.
    """
    from corral._version import __version__

    if not name or not name.strip():
        raise UsageError("a plugin needs a name")
    if template not in TEMPLATES:
        raise UsageError(
            f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}",
            template=template,
        )
    if isolation not in ISOLATIONS:
        raise UsageError(
            f"unknown isolation {isolation!r}; choose one of {', '.join(ISOLATIONS)}",
            isolation=isolation,
        )
    pid = plugin_id_for(name, plugin_id)
    human = name.strip() if name != pid else pid.rsplit(".", 1)[-1].replace("-", " ").title()
    package = package_name(pid)
    target = Path(directory if directory is not None else pid.rsplit(".", 1)[-1]).absolute()
    if target.exists():
        if not target.is_dir():
            raise UsageError(f"{target} exists and is not a directory", path=str(target))
        if any(target.iterdir()) and not force:
            raise UsageError(
                f"{target} is not empty; choose another --dir or pass --force to replace it",
                path=str(target),
            )
    author = author or _default_author()
    description = description or f"{human}: a corral plugin"
    authors = f"{{ name = {_toml_string(author)}"
    authors += f", email = {_toml_string(email)} }}" if email else " }"
    major_minor = ".".join(__version__.split(".")[:2])
    values = {
        "id": pid,
        "name": _doc_text(human),
        "name_toml": _toml_string(human),
        "package": package,
        "description": _doc_text(description),
        "description_toml": _toml_string(description),
        "package_doc": _package_doc(_doc_text(human), _doc_text(description)),
        "authors_toml": f"[{authors}]",
        "author": _doc_text(author),
        "isolation": isolation,
        "requires_corral": f">={major_minor}",
        "test_module": f"test_{package}",
    }
    files = _render(template, values, target, force=force)
    return NewPlugin(target, pid, human, template, package, isolation, files)


def _template_files(template: str) -> list[tuple[Path, str]]:
    """``(source, relative output path)`` of every file of a template, common ones first."""
    out: list[tuple[Path, str]] = []
    for folder in (_TEMPLATE_ROOT / "_common", _TEMPLATE_ROOT / template):
        if not folder.is_dir():
            continue
        for src in sorted(folder.rglob("*.tmpl")):
            out.append((src, src.relative_to(folder).as_posix()[: -len(".tmpl")]))
    if not out:
        raise UsageError(f"template {template!r} has no files (broken installation?)")
    return out


def _fill(text: str, values: Mapping[str, str], where: str) -> str:
    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise UsageError(f"template file {where} uses an unknown marker {{{{{key}}}}}")
        return values[key]

    return _MARKER.sub(sub, text)


def _render(template: str, values: Mapping[str, str], target: Path, *, force: bool) -> tuple[
    str, ...
]:
    """Build the plugin in a temporary sibling of ``target``, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".new", dir=target.parent))
    written: list[str] = []
    try:
        for src, name in _template_files(template):
            rel = name.replace(_PACKAGE_PART, values["package"]).replace(
                "test_module", values["test_module"]
            )
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(_fill(src.read_text(encoding="utf-8"), values, rel), encoding="utf-8")
            written.append(rel)
        tmp.chmod(0o755)
        if target.exists():
            if force:
                old = target.with_name(f".{target.name}.{os.urandom(4).hex()}.old")
                target.rename(old)
                try:
                    tmp.rename(target)
                except BaseException:
                    old.rename(target)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                target.rmdir()  # empty: checked before
                tmp.rename(target)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tuple(sorted(written))
