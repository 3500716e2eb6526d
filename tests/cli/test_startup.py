"""What `corral list` loads: the start-up path of every CLI run stays free of heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: Modules `corral list` must never import: each costs tens of milliseconds, or pulls in a
#: layer that listing does not need (packing, signing, the sandbox, the registry's stack).
HEAVY = ("cryptography", "msgspec", "httpx", "sqlalchemy", "fastapi",
         "corral._pdk", "corral._distribution.signing", "corral._disk.archive",
         "corral._sandbox", "corral.registry")

PROBE = """
import json, runpy, sys
home, heavy = sys.argv[1], tuple(json.loads(sys.argv[2]))
sys.argv = ["corral", "--home", home, "list", "--json"]
try:
    runpy.run_module("corral", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
print("\\nHEAVY=" + json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))
"""


def test_corral_list_imports_nothing_heavy(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "home"), json.dumps(HEAVY)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    listing, _, tail = proc.stdout.rpartition("\nHEAVY=")
    assert json.loads(listing) == {"plugins": []}  # the listing ran: an empty home lists nothing
    assert json.loads(tail) == []
