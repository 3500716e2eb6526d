"""The error tree: every class's code and exit code, and the JSON round trip."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

import pytest

import corral
import corral._errors as tree
from corral._errors import CorralError

#: The contract: JSON code -> exit code.
CONTRACT = {
    "error": 1, "usage": 2, "not_found": 1, "unavailable": 1, "unsupported": 1,
    "invalid": 3, "permission_denied": 4, "policy_denied": 4, "signature_invalid": 4,
    "plugin_error": 5, "timeout": 5, "resource_limit": 5, "crashed": 5,
}

#: Groupings that are never raised themselves: they give their children an exit code.
GROUPS = {tree.DeniedError: 4, tree.PluginFailedError: 5}

TREE = [c for c in vars(tree).values()
        if inspect.isclass(c) and issubclass(c, CorralError) and c.__module__ == tree.__name__]


def _sample(cls: type[CorralError]) -> CorralError:
    kwargs: dict[str, Any] = {"plugin_id": "acme.demo", "where": {"line": 3}}
    if issubclass(cls, tree.PermissionDenied):
        kwargs["permission"] = "fs-write:/etc"
    if issubclass(cls, tree.ManifestError):
        kwargs.update(file="corral.toml", key="plugin.id")
    if issubclass(cls, tree.MissingExtra):
        kwargs.update(module="pytest", extra="pdk")
    return cls("something went wrong\nover two lines", **kwargs)


def test_tree_is_complete() -> None:
    assert set(tree.__all__) == {c.__name__ for c in TREE}


@pytest.mark.parametrize("cls", TREE, ids=lambda c: c.__name__)
def test_code_and_exit_code(cls: type[CorralError]) -> None:
    if cls in GROUPS:
        assert cls.exit_code == GROUPS[cls]
        return
    assert cls.code in CONTRACT
    assert cls.exit_code == CONTRACT[cls.code]


@pytest.mark.parametrize("cls", [c for c in TREE if c not in GROUPS], ids=lambda c: c.__name__)
def test_round_trip(cls: type[CorralError]) -> None:
    exc = _sample(cls)
    doc = exc.to_dict()
    again = CorralError.from_dict(doc)
    assert type(again) is cls
    assert again.to_dict() == doc
    assert again.message == exc.message  # no prefix added a second time
    assert again.plugin_id == "acme.demo"
    assert again.exit_code == exc.exit_code
    if isinstance(exc, tree.PermissionDenied):
        assert isinstance(again, tree.PermissionDenied)
        assert again.permission == exc.permission
    if isinstance(exc, tree.ManifestError):
        assert isinstance(again, tree.ManifestError)
        assert (again.file, again.key) == (exc.file, exc.key)


def test_an_unknown_code_is_kept() -> None:
    again = CorralError.from_dict({"code": "brand_new", "message": "m", "x": 1})
    assert type(again) is CorralError
    assert again.to_dict() == {"code": "brand_new", "message": "m", "x": 1}


def test_an_unknown_reason_falls_back_to_the_code() -> None:
    again = CorralError.from_dict({"code": "unavailable", "message": "m", "reason": "no_space"})
    assert type(again) is tree.UnavailableError
    assert again.details["reason"] == "no_space"


def _every_module() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(corral.__path__, "corral."):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


def _all_subclasses(cls: type[CorralError]) -> list[type[CorralError]]:
    out: list[type[CorralError]] = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def test_every_corral_error_anywhere_has_a_contract_code() -> None:
    for name in _every_module():
        try:
            importlib.import_module(name)
        except ImportError:  # an optional foreign package is missing: nothing to see there
            continue
    found = [c for c in _all_subclasses(CorralError) if c.__module__.startswith("corral.")]
    assert {c.__module__ for c in found} > {tree.__name__}  # the registry's ones were found
    for cls in found:
        assert cls.code in CONTRACT, cls
        if cls in GROUPS:
            continue
        assert cls.code != "error" or cls is CorralError, f"{cls} has no code of its own"
        assert cls.exit_code == CONTRACT[cls.code], cls
        assert any(base in TREE for base in cls.__mro__[1:]), cls
        assert not cls.__name__.startswith("_"), cls


def test_registry_errors_round_trip_where_their_reason_says_which() -> None:
    from corral.registry._artifacts import ArtifactError
    from corral.registry._errors import UploadTooLarge, VersionExists

    for exc in (VersionExists("v"), UploadTooLarge("u"), ArtifactError("s")):
        again = CorralError.from_dict(exc.to_dict())
        assert type(again) is type(exc)
        assert again.to_dict() == exc.to_dict()
