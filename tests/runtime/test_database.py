"""The host database under concurrent use from the threads of one host."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from corral._runtime.database import HostDatabase, PluginRow


def _row(plugin_id: str) -> PluginRow:
    now = time.time()
    return PluginRow(
        id=plugin_id, version="1.0", path="/x", source="directory", state="registered",
        error=None, manifest={"plugin": {"id": plugin_id}}, manifest_mtime_ns=1,
        manifest_size=1, registered_at=now, updated_at=now,
    )


def test_threads_sharing_one_store_never_nest_transactions(tmp_path: Path) -> None:
    store = HostDatabase(tmp_path / "corral.db")
    with store.transaction() as conn:
        store.insert(conn, _row("acme.a"))
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                store.record_calls([("acme.a", "x", "none", "ok", 1.0, None, None, None, None,
                                     time.time())])
                store.set_state("acme.a", "enabled" if (n + i) % 2 else "disabled")
                assert store.get("acme.a") is not None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.call_summary("acme.a")["calls"] == 400
    store.close()
