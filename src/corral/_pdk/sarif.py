"""A ``validate`` report as SARIF 2.1.0, the format CI code-scanning tools read.

One run, tool ``corral``; ``tool.driver.rules`` lists every rule of
:mod:`corral._pdk.lint`; each issue of the report becomes a ``result`` whose
location is the file relative to the plugin (``uriBaseId`` ``PLUGINROOT``,
whose URI is the plugin's path).  The summary entry that a security error adds
to ``errors`` is left out: its issue is already a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

__all__ = ["SARIF_SCHEMA", "SARIF_VERSION", "to_sarif"]

SARIF_VERSION: Final = "2.1.0"
SARIF_SCHEMA: Final = "https://json.schemastore.org/sarif-2.1.0.json"
_SECTIONS: Final = ("errors", "warnings", "security", "performance", "suggestions")


def _result(issue: dict[str, Any], index: dict[str, int]) -> dict[str, Any]:
    rule = issue.get("rule", "CORRAL-E001")
    result: dict[str, Any] = {
        "ruleId": rule,
        "ruleIndex": index[rule],
        "level": issue.get("level", "error"),
        "message": {"text": issue["message"]},
    }
    file = issue.get("file")
    if file:
        physical: dict[str, Any] = {
            "artifactLocation": {"uri": file, "uriBaseId": "PLUGINROOT"}
        }
        if issue.get("line"):
            region: dict[str, int] = {"startLine": int(issue["line"])}
            if issue.get("column"):
                region["startColumn"] = int(issue["column"])
            physical["region"] = region
        result["locations"] = [{"physicalLocation": physical}]
    props = {k: issue[k] for k in ("permission", "key", "code") if issue.get(k)}
    if props:
        result["properties"] = props
    return result


def to_sarif(report: dict[str, Any]) -> dict[str, Any]:
    """The SARIF 2.1.0 log of one ``validate`` report (deterministic: report order)."""
    from corral._pdk.lint import RULES
    from corral._version import __version__

    rules = list(RULES.values())
    index = {r.id: i for i, r in enumerate(rules)}
    results = [
        _result(issue, index)
        for section in _SECTIONS
        for issue in report.get(section, ())
        if "see" not in issue
    ]
    root = Path(report["path"])
    base = root.as_uri() + ("/" if not root.as_uri().endswith("/") else "")
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {
                "name": "corral",
                "version": __version__,
                "informationUri": "https://corral.dev/docs/pdk",
                "rules": [{
                    "id": r.id,
                    "name": r.name,
                    "shortDescription": {"text": r.summary},
                    "defaultConfiguration": {"level": r.level},
                    "properties": {"category": r.section},
                } for r in rules],
            }},
            "originalUriBaseIds": {"PLUGINROOT": {"uri": base}},
            "results": results,
            "properties": {"plugin": report.get("plugin"), "version": report.get("version"),
                           "ok": report.get("ok"), "metrics": report.get("metrics")},
        }],
    }
