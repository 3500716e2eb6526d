"""Registry under closed-loop load: 1, 8, 32 and 128 clients while a publisher publishes.

Each client holds one keep-alive connection and sends its next request as soon
as the last one is answered: 80 % search, 10 % show, 5 % versions (one
version's details), 5 % download.  Alongside, one publisher publishes a 256 KB
plugin back to back.  ``corral registry serve`` runs in its own process with its
default worker count (one per core), on SQLite and on a throwaway PostgreSQL
cluster, loopback only; each level runs for ``--seconds``.

Printed per level: requests per second, p50/p95/p99 of all reads, search p95,
download p95, publishes done, errors; then the targets (throughput at 32
clients >= at 1, p99 at 32 < 1 s, download p95 <= 2x search p95).

Run: ``python benchmarks/bench_registry_load.py [--quick] [--json FILE] [--plugins N]
[--seconds S]`` (``--quick``: 2,000 plugins, 1 and 8 clients, 2 s each, SQLite only).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import random
import shutil
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402
from bench_registry import QUERIES, pct, pg_cluster, server  # noqa: E402
from harness import Bench  # noqa: E402

from corral._disk.archive import pack_directory  # noqa: E402
from corral.registry._seed import seed  # noqa: E402
from corral.registry._service import Registry  # noqa: E402

LEVELS = (1, 8, 32, 128)
#: The sample catalogue shipped with the project; ``--catalogue`` takes a larger one.
CATALOGUE = Path(os.environ.get("CORRAL_CATALOGUE") or ROOT / "examples" / "catalogue.tsv")
MIX = (("search", 80), ("show", 10), ("versions", 5), ("download", 5))
#: Publisher versions, unique across levels.
_VERSIONS = itertools.count(1)


def make_plugin(root: Path, plugin_id: str, version: str, size: int) -> Path:
    """A valid plugin archive with ``size`` random bytes of payload."""
    src = root / f"src-{uuid.uuid4().hex[:8]}"
    src.mkdir()
    (src / "corral.toml").write_text(textwrap.dedent(f"""\
        [plugin]
        id = "{plugin_id}"
        name = "Load"
        version = "{version}"
        description = "A plugin for the load benchmark"
        license = "MIT"
        authors = [{{ name = "Bench" }}]
        tags = ["bench"]

        [exports]
        run = "mod:run"
        """))
    (src / "mod.py").write_text("def run(input, ctx):\n    return input\n")
    (src / "data.bin").write_bytes(os.urandom(size))
    out = root / f"{plugin_id}-{version}.corral"
    pack_directory(src, out)
    shutil.rmtree(src)
    return out


def prepare(
    reg: Registry, catalogue: Path, tmp: Path, plugins: int
) -> tuple[str, list[str], list[str]]:
    """Seed ``plugins`` catalogue rows and publish 20 downloadable plugins."""
    seed(reg, catalogue, limit=plugins)
    reg.create_publisher("bench")
    reg.create_namespace("bench", "bench")
    token = reg.create_token("bench", scopes=("publish", "yank"))
    from corral.registry._accounts import authenticate

    with reg.read() as conn:
        who = authenticate(conn, token)
    published = []
    for i in range(20):
        archive = make_plugin(tmp, f"bench.load{i}", "1.0.0", 32 * 1024)
        reg.publish(archive, who)
        published.append(f"bench.load{i}")
    with reg.read() as conn:
        ids = [str(x) for x in conn.execute(
            sa.text("SELECT id FROM plugins ORDER BY downloads DESC LIMIT 500")).scalars()]
    return token, ids, published


class Client(threading.Thread):
    """One closed-loop client on its own keep-alive connection."""

    def __init__(self, host: str, port: int, deadline: float, seed_: int,
                 ids: list[str], published: list[str]) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.deadline = host, port, deadline
        self.rng = random.Random(seed_)
        self.ids, self.published = ids, published
        self.lat: dict[str, list[float]] = {k: [] for k, _ in MIX}
        self.errors = 0
        self.first_error = ""

    def path(self, kind: str) -> str:
        if kind == "search":
            return "/v1/search?" + urllib.parse.urlencode({"q": self.rng.choice(QUERIES)})
        if kind == "show":
            return f"/v1/plugins/{self.rng.choice(self.ids)}"
        if kind == "versions":
            return f"/v1/plugins/{self.rng.choice(self.published)}/versions/1.0.0"
        return f"/v1/plugins/{self.rng.choice(self.published)}/versions/1.0.0/download"

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        while time.monotonic() < self.deadline:
            kind = self.rng.choices(kinds, weights)[0]
            t0 = time.perf_counter()
            try:
                conn.request("GET", self.path(kind))
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
                why = f"{kind} HTTP {resp.status}"
            except (OSError, http.client.HTTPException) as exc:
                ok = False
                why = f"{kind} {type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            if ok:
                self.lat[kind].append((time.perf_counter() - t0) * 1000)
            else:
                self.errors += 1
                self.first_error = self.first_error or why
        conn.close()


class Publisher(threading.Thread):
    """Publishes a fresh 256 KB plugin version back to back until the deadline."""

    def __init__(self, url: str, token: str, tmp: Path, deadline: float) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.tmp, self.deadline = url, token, tmp, deadline
        self.lat: list[float] = []
        self.errors = 0
        self.first_error = ""

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=120,
                          headers={"Authorization": f"Bearer {self.token}"}) as http:
            while time.monotonic() < self.deadline:
                archive = make_plugin(self.tmp, "bench.publisher",
                                      f"1.{next(_VERSIONS)}.0", 256 * 1024)
                t0 = time.perf_counter()
                r = http.post("/v1/publish", files={"archive": (archive.name,
                                                               archive.read_bytes())})
                archive.unlink()
                if r.status_code == 201:
                    self.lat.append((time.perf_counter() - t0) * 1000)
                else:
                    self.errors += 1
                    self.first_error = (self.first_error
                                        or f"publish HTTP {r.status_code}: {r.text[:200]}")


def run_level(url: str, token: str, tmp: Path, clients: int, seconds: float,
              ids: list[str], published: list[str]) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + seconds
    threads = [Client(host, int(port), deadline, i, ids, published) for i in range(clients)]
    pub = Publisher(url, token, tmp, deadline)
    t0 = time.monotonic()
    pub.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    pub.join()
    lat: dict[str, list[float]] = {k: [] for k, _ in MIX}
    for t in threads:
        for k, v in t.lat.items():
            lat[k].extend(v)
    every = [x for v in lat.values() for x in v]
    return {
        "clients": clients, "rps": len(every) / elapsed,
        "p50": pct(every, 50), "p95": pct(every, 95), "p99": pct(every, 99),
        "search95": pct(lat["search"], 95), "download95": pct(lat["download"], 95),
        "published": len(pub.lat), "publish95": pct(pub.lat, 95) if pub.lat else 0.0,
        "errors": sum(t.errors for t in threads) + pub.errors,
        "first_error": pub.first_error
        or next((t.first_error for t in threads if t.first_error), ""),
    }


def report(name: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{name}")
    print(f"{'clients':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'search p95':>10} {'download p95':>12} {'publishes':>9} {'publish p95':>11} "
          f"{'errors':>6}")
    for r in rows:
        print(f"{r['clients']:>7} {r['rps']:>7.1f} {r['p50']:>8.1f} {r['p95']:>8.1f} "
              f"{r['p99']:>8.1f} {r['search95']:>10.1f} {r['download95']:>12.1f} "
              f"{r['published']:>9} {r['publish95']:>11.1f} {r['errors']:>6}")
        if r["first_error"]:
            print(f"        first error: {r['first_error']}")
    run = RUN[0]
    figs = {}
    for r in rows:
        figs[r["clients"]] = run.value(f"{name}, {r['clients']} clients: throughput "
                                       f"({r['errors']} errors)", r["rps"], "req/s")
        run.value(f"{name}, {r['clients']} clients: p99 of reads", r["p99"], "ms",
                  target="< 1000 ms at 32 clients")
    many = max(figs)
    if 1 in figs and many > 1:
        run.ratio(figs[many], figs[1], target=">= 1",
                  label=f"{name}: throughput at {many} clients / at 1")
    by = {r["clients"]: r for r in rows}
    if 1 in by and 32 in by:
        one, many = by[1], by[32]
        print(f"  targets: req/s at 32 >= at 1: {many['rps']:.1f} vs {one['rps']:.1f} "
              f"({'ok' if many['rps'] >= one['rps'] else 'MISSED'}); "
              f"p99 at 32 < 1000 ms: {many['p99']:.0f} "
              f"({'ok' if many['p99'] < 1000 else 'MISSED'}); "
              f"download p95 <= 2x search p95 at 32: {many['download95']:.1f} vs "
              f"{many['search95']:.1f} "
              f"({'ok' if many['download95'] <= 2 * many['search95'] else 'MISSED'})")


def bench(name: str, data: Path, db: str | None, tmp: Path, args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    with Registry.open(data, db) as reg:
        token, ids, published = prepare(reg, args.catalogue, tmp, args.plugins)
    print(f"\n{name}: {args.plugins} catalogue plugins + 20 published, "
          f"prepared in {time.perf_counter() - t0:.1f} s; server workers: default "
          f"({os.cpu_count()} cores)")
    rows = []
    with server(data, db, workers=os.cpu_count() or 1) as url:
        run_level(url, token, tmp, 4, 2.0, ids, published)  # warm-up
        for clients in args.levels:
            rows.append(run_level(url, token, tmp, clients, args.seconds, ids, published))
    report(name, rows)


#: The run's harness; made once in ``main``.
RUN: list[Bench] = []


def main() -> int:
    harness = Bench("bench_registry_load", __doc__)
    RUN.append(harness)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugins", type=int, default=20_000,
                        help="catalogue rows to seed (default 20000)")
    parser.add_argument("--seconds", type=float, default=8.0, help="per level (default 8)")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--no-postgresql", action="store_true")
    parser.add_argument("--catalogue", type=Path, default=CATALOGUE,
                        help="a catalogue TSV (default: the sample in examples/)")
    args = parser.parse_args(harness.rest)
    if harness.quick:
        args.plugins, args.seconds, args.levels, args.no_postgresql = 2_000, 2.0, [1, 8], True
    if not args.catalogue.is_file():
        print(f"{args.catalogue} is not available", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        bench("SQLite", tmp / "sqlite", None, tmp, args)
        if not args.no_postgresql:
            with pg_cluster() as pg:
                if pg is None:
                    print("\nPostgreSQL: binaries not installed, skipped")
                else:
                    bench("PostgreSQL", tmp / "pg", pg, tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    harness.done()
    return 0


if __name__ == "__main__":
    sys.exit(main())
