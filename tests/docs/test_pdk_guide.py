"""docs/pdk.md's "Author's path", run command by command as written.

The block needs a registry; the test makes it with the first steps of
docs/registry.md's guide (up to the publisher's namespace), run as written there,
then walks the author's block with its first line's two values (``REG``, ``URL``)
replaced, as :mod:`helpers.docs` describes for every walked guide.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers.docs import REPO, ShellWalk, exported, sh_block, steps
from helpers.net import free_port

from corral._sandbox.landlock import landlock_abi

PDK = REPO / "docs" / "pdk.md"
REGISTRY = REPO / "docs" / "registry.md"


def registry_setup() -> list[tuple[str, str | None]]:
    """registry.md's steps up to the namespace: TUF, seed, serve, publisher, namespace."""
    guide = steps(sh_block(REGISTRY, "## From nothing to an install"))
    last = next(i for i, (c, _) in enumerate(guide) if "create-namespace" in c)
    return guide[: last + 1]


def test_the_block_is_well_formed() -> None:
    lines = sh_block(PDK, "## Author's path")
    assert exported(lines[0]) == ["REG", "URL"]
    text = "\n".join(c for c, _ in steps(lines))
    for step in ("corral keys generate", "add-key acme", "verify-publisher", "create-token",
                 "corral new", "corral test hello", "corral validate hello", "corral pack hello",
                 "corral publish hello", "registry trust", "install acme.hello",
                 "enable acme.hello", "call acme.hello", "verify", "corral docs hello"):
        assert step in text, step
    assert not any(c.endswith("&") for c, _ in steps(lines))
    assert any(c.endswith("&") for c, _ in registry_setup())  # the setup serves it


@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.platform != "linux" or landlock_abi() < 1,
                    reason="the template's strict sandbox needs Linux with Landlock")
def test_the_authors_path_runs_as_written(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    reg = tmp_path / "registry"
    walk = ShellWalk(tmp_path, {"REG": str(reg), "KEYS": str(tmp_path / "offline-keys"),
                                "HOME2": str(tmp_path / "unused"), "PORT": str(port),
                                "URL": url})
    try:
        walk.walk(registry_setup(), f"{url}/v1/health")
        walk.walk(steps(sh_block(PDK, "## Author's path")), f"{url}/v1/health")
    finally:
        walk.close()
    site = walk.work / "site"
    assert (site / "acme.hello.md").is_file()
    assert (site / "acme.hello.html").is_file()
    assert (walk.work / "hello" / "corral.toml").is_file()
