"""The public surface and the files generated from the code stay in step with the code.

Rules enforced here:

* every name in ``corral.__all__``, ``corral.registry.__all__`` and
  ``corral.testing.__all__`` imports; a class or function has its own
  docstring, a type alias a ``#:`` comment above its assignment;
* every class exported from ``corral`` or ``corral.testing`` is ``@final``,
  except the error tree (``CorralError`` and its subclasses: applications
  subclass and catch them) and enums (an enum with members cannot be
  subclassed anyway);
* ``docs/corral.schema.json`` is exactly what ``corral schema`` builds, and
  ``docs/manifest.md`` what ``corral schema --markdown`` builds (every key described);
* every module under ``src/corral/`` (templates aside) is named in
  ``docs/architecture.md``: by its path (``_model/manifest.py``), or by its
  stem on a line that names its folder (```_services/events/` (`bus`, ...)``);
  a package's ``__init__.py`` is covered by its folder;
* ``docs/contract.md`` names every error code of ``corral._errors`` and every
  verb of the command line (a verb of ``corral --help`` with its help line),
  and holds the manifest example the tests use.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers.plugins import MANIFEST_EXAMPLE

import corral
import corral._errors
import corral.registry
import corral.testing
from corral._cli.main import _REGISTRY_CLIENT_VERBS, _parser
from corral._model.manifest_doc import manifest_markdown
from corral._model.schema import manifest_json_schema

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "corral"
DOCS = ROOT / "docs"
PUBLIC = {"corral": corral, "corral.registry": corral.registry, "corral.testing": corral.testing}


def _exports() -> list[tuple[str, str]]:
    return [(mod, name) for mod, module in PUBLIC.items() for name in module.__all__]


def _has_doc_comment(module: ModuleType, name: str) -> bool:
    """True if ``name = ...`` in ``module``'s source has a ``#:`` comment right above it."""
    lines = inspect.getsource(module).splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"{re.escape(name)}\s*(?::[^=]*)?=", line):
            return i > 0 and lines[i - 1].lstrip().startswith("#:")
    return False


@pytest.mark.parametrize(("module", "name"), _exports())
def test_every_public_name_imports_and_is_documented(module: str, name: str) -> None:
    mod = importlib.import_module(module)
    obj = getattr(mod, name)  # what `from module import name` does; fails if it is not there
    if name == "__version__":
        assert isinstance(obj, str)
    elif inspect.isclass(obj) or inspect.isroutine(obj):
        # A class's __doc__ is its own (never inherited); so is a function's.
        assert (obj.__doc__ or "").strip(), f"{module}.{name} has no docstring"
    else:  # data: a type alias or a constant, documented where it is assigned
        assert _has_doc_comment(mod, name), f"{module}.{name} has no #: comment"


def _is_error_or_enum(cls: type) -> bool:
    return issubclass(cls, corral.CorralError | enum.Enum)


@pytest.mark.parametrize(
    ("module", "name"),
    [(m, n) for m, n in _exports() if m != "corral.registry"
     and inspect.isclass(getattr(PUBLIC[m], n)) and not _is_error_or_enum(getattr(PUBLIC[m], n))],
)
def test_public_classes_are_final(module: str, name: str) -> None:
    cls = getattr(PUBLIC[module], name)
    assert getattr(cls, "__final__", False), f"{module}.{name} is not @final"


def test_the_error_tree_is_exported_from_corral() -> None:
    errors = {n for n in corral._errors.__all__ if n not in ("ConflictError", "TransferError")}
    assert errors <= set(corral.__all__)


def test_schema_file_is_what_corral_schema_builds() -> None:
    text = (DOCS / "corral.schema.json").read_text(encoding="utf-8")
    expected = json.dumps(manifest_json_schema(), indent=2, ensure_ascii=False) + "\n"
    assert text == expected, "regenerate it from manifest_json_schema(), indent=2"


def test_manifest_reference_is_what_corral_schema_markdown_builds() -> None:
    text = (DOCS / "manifest.md").read_text(encoding="utf-8")
    assert text == manifest_markdown(), "regenerate it: corral schema --markdown"


def test_every_manifest_key_is_described() -> None:
    def missing(node: dict[str, Any], path: str) -> list[str]:
        out: list[str] = []
        for key, sub in node.get("properties", {}).items():
            where = f"{path}{key}"
            out += [] if sub.get("description") else [where]
            items = sub.get("items")
            if isinstance(items, dict):
                out += missing(items, f"{where}[].")
            out += missing(sub, f"{where}.")
        return out

    assert missing(manifest_json_schema(), "") == []
    for key in ("net-connect", "reasons", "requires-corral", "max-ms", "timeout-ms"):
        assert f"| `{key}" in manifest_markdown()


def _modules() -> list[str]:
    return sorted(
        p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
        if "templates" not in p.relative_to(SRC).parts
    )


def _documented(module: str, doc: str) -> bool:
    lines = [set(re.findall(r"`([^`]+)`", line)) for line in doc.splitlines()]
    named = set().union(*lines)
    if module in named:
        return True
    folder, _, file = module.rpartition("/")
    if not folder:
        return False
    if file == "__init__.py":
        return f"{folder}/" in named
    stem = file.removesuffix(".py")
    return any(f"{folder}/" in line and (stem in line or file in line) for line in lines)


def test_modules_are_named_in_the_architecture() -> None:
    doc = (DOCS / "architecture.md").read_text(encoding="utf-8")
    missing = [m for m in _modules() if not _documented(m, doc)]
    assert not missing, f"name these in docs/architecture.md: {missing}"


def test_the_architecture_check_catches_a_new_module() -> None:
    doc = (DOCS / "architecture.md").read_text(encoding="utf-8")
    assert _documented("_model/manifest.py", doc)
    assert not _documented("_model/nobody_documented_me.py", doc)
    assert not _documented("_services/events/nobody.py", doc)


def _parser_verbs() -> dict[str, str]:
    """Each verb of ``corral --help`` and its one-line description."""
    parser: Any = _parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    return {name: " ".join(sp.description.split()) for name, sp in sub.choices.items()}


def _verbs() -> set[str]:
    return set(_parser_verbs()) | set(_REGISTRY_CLIENT_VERBS) | {"registry"}


def _error_codes() -> set[str]:
    return {getattr(corral._errors, name).code for name in corral._errors.__all__}


def test_contract_names_every_error_code_and_verb() -> None:
    doc = (DOCS / "contract.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([^`\n]+)`", doc))
    assert _error_codes() - named == set(), "error codes missing from docs/contract.md"
    assert {"permission_denied", "crashed", "unavailable", "error"} <= _error_codes()
    # Each verb has a row of its own in a table: | `VERB ...` | what it does |
    missing = {v for v in _verbs() if not re.search(rf"^\| `{re.escape(v)}[` ]", doc, re.M)}
    assert not missing, f"verbs missing from docs/contract.md: {sorted(missing)}"
    for verb, description in _parser_verbs().items():
        row = re.search(rf"^\| `{re.escape(verb)}[` ].*\| (.*) \|$", doc, re.M)
        assert row, f"{verb}: no row in docs/contract.md"
        assert row[1] == description, f"{verb}: its row must say {description!r}"


def test_contract_holds_the_manifest_example_of_the_tests() -> None:
    doc = (DOCS / "contract.md").read_text(encoding="utf-8")
    assert MANIFEST_EXAMPLE.strip() in doc
