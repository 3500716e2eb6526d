"""``corral validate`` as a full report: sections, the sandboxed import, SARIF, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import CliResult
from helpers.plugins import make_plugin

from corral._pdk.lint import RULES
from corral._pdk.sarif import to_sarif
from corral._pdk.validate import validate_plugin
from corral._services.sandboxed import sandbox_problem
from corral._version import __version__

needs_strict = pytest.mark.skipif(
    sandbox_problem("strict") is not None, reason=f"no strict sandbox: {sandbox_problem('strict')}"
)

SLOW = "import time\ntime.sleep(0.25)\n\ndef go(input, ctx):\n    return input\n"
RAISES = "def go(input, ctx):\n    return input\n\nraise ValueError('broken at import')\n"
SNEAKY = (
    "import subprocess\n"
    "import os\n\n"
    "def go(input, ctx):\n"
    "    return os.environ.get('SECRET_TOKEN')\n\n"
    "def bad(input):\n"
    "    return input\n"
)
BIG = 5 * 1024 * 1024 + 1


def write(tmp_path: Path, id: str, code: str, **manifest: Any) -> Path:
    mod = "m_" + id.replace(".", "_")
    manifest.setdefault("exports", {"go": f"{mod}:go"})
    return make_plugin(tmp_path, id, {f"{mod}.py": code}, **manifest)


def report_of(path: Path, **kw: Any) -> dict[str, Any]:
    return validate_plugin(path, host_version=__version__, known={}, **kw)


def test_report_has_every_section_and_metrics(tmp_path: Path) -> None:
    mod = "m_acme_sneaky"
    path = write(tmp_path, "acme.sneaky", SNEAKY,
                 exports={"go": f"{mod}:go", "bad": f"{mod}:bad"})
    (path / "blob.bin").write_bytes(b"\0" * BIG)
    report = report_of(path)
    assert set(report) == {"ok", "plugin", "version", "path", "errors", "warnings", "security",
                           "performance", "suggestions", "metrics"}
    assert report["ok"] is False
    assert report["plugin"] == "acme.sneaky"
    sig = [e for e in report["errors"] if e["rule"] == "CORRAL-E003"]
    assert [(e["file"], e["line"]) for e in sig] == [(f"{mod}.py", 7)]
    assert "export 'bad'" in sig[0]["message"]
    assert sig[0]["code"] == "invalid"
    sec = {(i["rule"], i["line"], i.get("permission")) for i in report["security"]}
    assert sec == {("CORRAL-S002", 1, "spawn"), ("CORRAL-S009", 5, "env:SECRET_TOKEN")}
    assert [p["rule"] for p in report["performance"]] == ["CORRAL-P002"]
    assert report["metrics"]["files"] == 3
    assert report["metrics"]["bytes"] > BIG
    assert report["metrics"]["import_ms"] is None  # not imported without sandbox=True
    # every issue has the one shape the CLI prints and SARIF maps
    for section in ("errors", "warnings", "security", "performance", "suggestions"):
        for issue in report[section]:
            assert {"rule", "level", "message", "file", "line", "column"} <= set(issue)
            assert issue["level"] in ("error", "warning", "note")
            assert issue["rule"] in RULES
    # the existing warning keys stay (the registry reads them)
    assert report["warnings"]  # all() below must not pass on nothing
    assert all("key" in w for w in report["warnings"])
    suggestions = {s["key"] for s in report["suggestions"]}
    assert {"plugin.tags", "README.md", "exports.self-test"} <= suggestions


def test_a_security_error_alone_makes_the_plugin_invalid(tmp_path: Path) -> None:
    path = write(tmp_path, "acme.spawner",
                 "import subprocess\n\ndef go(input, ctx):\n    return 1\n")
    report = report_of(path)
    assert report["ok"] is False
    (first,) = report["errors"]  # callers that read only errors see why
    assert first["code"] == "permission_denied"
    assert first["see"] == "security"
    assert first["permission"] == "spawn"
    granted = write(tmp_path, "acme.spawner2",
                    "import subprocess\n\ndef go(input, ctx):\n    return 1\n",
                    permissions={"spawn": ["git"]})
    assert report_of(granted)["ok"] is True


def test_clean_plugin_is_ok_and_static_can_be_turned_off(tmp_path: Path) -> None:
    path = write(tmp_path, "acme.clean", "def go(input, ctx):\n    return input\n")
    report = report_of(path)
    assert report["ok"] is True
    assert report["errors"] == report["security"] == report["performance"] == []
    sneaky = write(tmp_path, "acme.sneaky", SNEAKY)
    assert report_of(sneaky, static=False)["security"] == []


def test_sandbox_none_imports_in_a_subprocess_and_times_it(tmp_path: Path) -> None:
    path = write(tmp_path, "acme.slow", SLOW, sandbox={"isolation": "none"})
    report = report_of(path, sandbox=True)
    assert report["metrics"]["import_ms"] >= 240
    assert [p["rule"] for p in report["performance"]] == ["CORRAL-P001"]
    assert report["ok"] is True  # slow is a warning, not an error
    import sys

    assert "m_acme_slow" not in sys.modules  # never imported into this process


def test_sandbox_none_catches_a_module_raising_on_import(tmp_path: Path) -> None:
    path = write(tmp_path, "acme.raises", RAISES, sandbox={"isolation": "none"})
    report = report_of(path, sandbox=True)
    assert report["ok"] is False
    (err,) = report["errors"]
    assert err["rule"] == "CORRAL-E004"
    assert "ValueError: broken at import" in err["message"]
    assert (err["file"], err["line"]) == ("m_acme_raises.py", 4)


@needs_strict
def test_strict_sandbox_import_catches_raise_and_measures(tmp_path: Path) -> None:
    slow = write(tmp_path, "acme.slow", SLOW, sandbox={"isolation": "strict"})
    report = report_of(slow, sandbox=True)
    assert report["ok"] is True
    assert report["metrics"]["import_ms"] >= 240
    assert report["performance"][0]["rule"] == "CORRAL-P001"
    bad = write(tmp_path, "acme.raises", RAISES, sandbox={"isolation": "strict"})
    report = report_of(bad, sandbox=True)
    (err,) = report["errors"]
    assert err["rule"] == "CORRAL-E004"
    assert "broken at import" in err["message"]
    assert err["line"] == 4


@needs_strict
def test_strict_sandbox_import_is_confined(tmp_path: Path) -> None:
    """Code run at import cannot write outside its grants: the attempt fails the import."""
    marker = tmp_path / "escaped"
    code = f"open({str(marker)!r}, 'w').write('x')\n\ndef go(input, ctx):\n    return 1\n"
    path = write(tmp_path, "acme.escape", code, sandbox={"isolation": "strict"})
    report = validate_plugin(path, host_version=__version__, known={}, static=False,
                             sandbox=True)
    assert not marker.exists()
    assert report["errors"][0]["rule"] == "CORRAL-E004"


# -- SARIF ------------------------------------------------------------------------------


def test_sarif_structure(tmp_path: Path) -> None:
    path = write(tmp_path, "acme.sneaky", SNEAKY)
    report = report_of(path)
    log = to_sarif(report)
    assert log["version"] == "2.1.0"
    assert log["$schema"].endswith("sarif-2.1.0.json")
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "corral"
    ids = [r["id"] for r in driver["rules"]]
    assert ids == list(RULES)
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"]
        assert rule["defaultConfiguration"]["level"] in ("error", "warning", "note")
    base = run["originalUriBaseIds"]["PLUGINROOT"]["uri"]
    assert base.startswith("file://")
    assert base.endswith("/")
    results = run["results"]
    # the summary error added for the security error is not a second result
    n_issues = sum(len(report[s]) for s in ("errors", "warnings", "security", "performance",
                                            "suggestions"))
    assert len(results) == n_issues - sum("see" in e for e in report["errors"])
    for res in results:
        assert ids[res["ruleIndex"]] == res["ruleId"]
        assert res["level"] in ("error", "warning", "note")
        assert res["message"]["text"]
        for loc in res.get("locations", ()):
            phys = loc["physicalLocation"]
            assert not phys["artifactLocation"]["uri"].startswith("/")
            assert phys["artifactLocation"]["uriBaseId"] == "PLUGINROOT"
            if "region" in phys:
                assert phys["region"]["startLine"] >= 1
                assert phys["region"].get("startColumn", 1) >= 1
    spawn = next(r for r in results if r["ruleId"] == "CORRAL-S002")
    assert spawn["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "m_acme_sneaky.py", "uriBaseId": "PLUGINROOT"},
        "region": {"startLine": 1, "startColumn": 1},
    }
    assert spawn["properties"]["permission"] == "spawn"
    assert json.loads(json.dumps(log)) == log


# -- the command line -------------------------------------------------------------------


def test_cli_json_sarif_and_exit_codes(run_cli: Any, tmp_path: Path) -> None:
    clean = write(tmp_path, "acme.clean", "def go(input, ctx):\n    return input\n",
                  sandbox={"isolation": "none"})
    res: CliResult = run_cli("validate", str(clean), "--json")
    assert res.code == 0
    assert res.json["ok"] is True
    assert res.json["metrics"]["import_ms"] is not None  # imported (in a subprocess)
    res = run_cli("validate", str(clean), "--json", "--no-sandbox")
    assert res.json["metrics"]["import_ms"] is None

    sneaky = write(tmp_path, "acme.spawner",
                   "import subprocess\n\ndef go(input, ctx):\n    return 1\n")
    res = run_cli("validate", str(sneaky), "--json")
    assert res.code == 4  # a permission problem
    assert res.json["security"][0]["rule"] == "CORRAL-S002"

    res = run_cli("validate", str(sneaky), "--sarif")
    assert res.code == 4
    log = json.loads(res.out)
    assert "CORRAL-S002" in [r["ruleId"] for r in log["runs"][0]["results"]]

    out = tmp_path / "out.sarif"
    res = run_cli("validate", str(sneaky), "--sarif", str(out))
    assert res.code == 4
    assert json.loads(out.read_text())["version"] == "2.1.0"
    assert "security" in res.out
    assert "CORRAL-S002" in res.out  # the text report, grouped by section

    bad = write(tmp_path, "acme.badsig", "def go(input):\n    return input\n")
    res = run_cli("validate", str(bad))
    assert res.code == 3
    assert "errors" in res.out
    assert "CORRAL-E003" in res.out

    res = run_cli("validate", str(bad), "--json", "--sarif")
    assert res.code == 2


@needs_strict
def test_strict_sandbox_runs_the_hooks(tmp_path: Path) -> None:
    code = (
        "def go(input, ctx):\n    return 1\n\n"
        "class Plugin:\n"
        "    def on_enable(self, ctx):\n"
        "        raise RuntimeError('hook exploded')\n"
    )
    mod = "m_acme_hooks"
    path = write(tmp_path, "acme.hooks", code, sandbox={"isolation": "strict"},
                 plugin={"entry": f"{mod}:Plugin"})
    report = report_of(path, sandbox=True)
    (err,) = report["errors"]
    assert err["rule"] == "CORRAL-E004"
    assert "on_load/on_enable" in err["message"]
    assert "hook exploded" in err["message"]
    assert report["metrics"]["import_ms"] is not None
