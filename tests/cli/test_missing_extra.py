"""A verb whose optional part is not installed names the extra to install and exits 1.

Each run is a real subprocess in which a meta path finder makes one package
unimportable, as on a machine where its extra was left out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Runs ``corral`` with the packages named in argv[1] (comma-separated) made unimportable.
_WRAPPER = """
import sys
blocked = set(sys.argv[1].split(","))

class Blocker:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker)
from corral._cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _corral(blocked: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_HOME", "XDG_DATA_HOME")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", _WRAPPER, blocked, "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_test_without_pytest_names_the_pdk_extra(tmp_path: Path) -> None:
    plugin = ROOT / "plugins" / "git"
    r = _corral("pytest", "test", str(plugin), home=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "pip install 'corral[pdk]'" in r.stderr
    assert "pytest" in r.stderr
    r = _corral("pytest", "test", str(plugin), "--json", home=tmp_path)
    assert r.returncode == 1
    error = json.loads(r.stdout)["error"]
    assert error["code"] == "unavailable"
    assert error["reason"] == "missing_extra"
    assert (error["module"], error["extra"]) == ("pytest", "pdk")


@pytest.mark.parametrize("blocked", ["uvicorn", "fastapi", "sqlalchemy"])
def test_registry_serve_without_server_packages_names_the_registry_extra(
    tmp_path: Path, blocked: str
) -> None:
    r = _corral(blocked, "registry", "serve", "--data", str(tmp_path / "reg"), "--port", "1",
                home=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "pip install 'corral[registry]'" in r.stderr
    assert "Traceback" not in r.stderr


def test_client_verb_without_httpx_names_the_extra(tmp_path: Path) -> None:
    r = _corral("httpx", "search", "anything", "--registry", "http://127.0.0.1:1", "--json",
                home=tmp_path)
    assert r.returncode == 1, r.stderr
    error = json.loads(r.stdout)["error"]
    assert error["reason"] == "missing_extra"
    assert "pip install 'corral[registry]'" in error["message"]


def test_missing_extra_round_trips_through_its_json_form() -> None:
    from corral._errors import CorralError, MissingExtra

    exc = MissingExtra.of("pytest", "pdk", needed_by="corral test")
    back = CorralError.from_dict(exc.to_dict())
    assert type(back) is MissingExtra
    assert (back.module, back.extra, back.exit_code) == ("pytest", "pdk", 1)
