"""Registry figures through the HTTP API, with a real server in its own process.

* search latency (p50/p95/p99) over 100,000 plugins: the real catalogue plus
  generated variants, on SQLite (target p95 <= 50 ms) and, when the
  PostgreSQL binaries are installed, on a throwaway PostgreSQL cluster;
* publish of a 1 MB plugin, end to end (client upload -> validated -> stored
  -> 201; target <= 300 ms);
* sustained load: 8 client threads mixing search, info and download on
  loopback; throughput, p50/p99 and the error count.

Run it with the virtualenv's interpreter, e.g.
``python benchmarks/bench_registry.py [--quick] [--json FILE] [--catalogue FILE] [--no-postgresql]``
(``CORRAL_CATALOGUE`` sets the catalogue too; ``--quick`` seeds 20,000 rows, SQLite only).
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from harness import Bench, Figure  # noqa: E402

from corral._disk.archive import pack_directory  # noqa: E402
from corral.registry._seed import seed  # noqa: E402
from corral.registry._service import Registry  # noqa: E402

TARGET = 100_000
QUERIES = [
    "run tests in parallel", "pytset-xdist", "markdown documentation site", "pytest-xdist",
    "measure test coverage", "django rest api", "mock objects in tests", "flake8 bugbear",
    "read the docs theme for sphinx", "check code style", "django debug toolbar",
    "material theme for mkdocs", "jupyterlab git", "async tests", "retry flaky tests",
    "djangorestframwork", "reqeusts", "timeout for tests", "cors headers django",
    "airflow amazon provider", "flask database orm", "environment variables from .env file",
    "code formatter", "sort imports", "flask login", "sphinx autodoc type hints",
    "pytest html report", "benchmark tests", "django filter", "snapshot testing",
    "spell check code", "django", "pytest", "requests", "numpy", "yaml parser",
    "static type checker", "http client", "web framework", "mkdocs", "s3 storage",
]


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


#: The run's harness; made once in ``main``.
RUN: list[Bench] = []


def fmt(values: list[float], name: str = "", target: str = "") -> str:
    if name:
        RUN[0].record(Figure(name, "ms", values, target))
    return (f"p50 {pct(values, 50):6.1f} ms  p95 {pct(values, 95):6.1f} ms  "
            f"p99 {pct(values, 99):6.1f} ms  (n={len(values)})")


def make_catalogue(src: Path, out: Path) -> int:
    """The real catalogue plus generated variants, TARGET rows in all."""
    with src.open(encoding="utf-8", newline="") as fp:
        rows = list(csv.DictReader(fp, delimiter="\t", quoting=csv.QUOTE_NONE))
    rng = random.Random(7)
    suffixes = ["plus", "lite", "ng", "extra", "tools", "utils", "next", "core", "kit", "pro"]
    names = {r["name"].lower() for r in rows}
    while len(rows) < TARGET:
        base = rng.choice(rows)
        other = rng.choice(rows)
        name = f"{base['name']}-{rng.choice(suffixes)}{rng.randint(1, 999)}"
        if name.lower() in names:
            continue
        names.add(name.lower())
        rows.append({"name": name, "version": base["version"], "month": base["month"],
                     "popularity_rank": "",
                     "summary": f"{base['summary']} {other['summary']}"[:300]})
    with out.open("w", encoding="utf-8", newline="") as fp:
        fp.write("name\tversion\tmonth\tpopularity_rank\tsummary\n")
        for r in rows:
            fp.write("\t".join(str(r.get(k) or "").replace("\t", " ") for k in
                               ("name", "version", "month", "popularity_rank", "summary")) + "\n")
    return len(rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVER_PID: list[int] = []


def cpu_ms(pid: int) -> float:
    """CPU time (user + system) a process has used, in ms (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(data: Path, db: str | None = None, workers: int = 1) -> Iterator[str]:
    """``corral registry serve`` in a subprocess; yields its URL once healthy."""
    port = free_port()
    cmd = [sys.executable, "-c", "import sys; from corral.registry import registry_main; "
           "sys.exit(registry_main(sys.argv[1:]))", "serve", "--data", str(data),
           "--port", str(port)]
    if db:
        cmd += ["--db", db]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    SERVER_PID[:] = [proc.pid]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/v1/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def bench_search(url: str, rounds: int = 5) -> list[float]:
    times: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for q in QUERIES:  # warm-up
            http.get("/v1/search", params={"q": q}).raise_for_status()
        cpu0 = cpu_ms(SERVER_PID[0])
        for _ in range(rounds):
            for q in QUERIES:
                t0 = time.perf_counter()
                http.get("/v1/search", params={"q": q}).raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
        cpu = (cpu_ms(SERVER_PID[0]) - cpu0) / len(times)
    print(f"  search: server CPU per request {cpu:.1f} ms (wall figures include any "
          f"contention: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    return times


def make_plugin(root: Path, version: str, size: int) -> Path:
    src = root / f"p-{version}"
    src.mkdir()
    (src / "corral.toml").write_text(textwrap.dedent(f"""\
        [plugin]
        id = "bench.big-plugin"
        name = "Big Plugin"
        version = "{version}"
        description = "A plugin of about one megabyte"
        license = "MIT"
        authors = [{{ name = "Bench" }}]

        [exports]
        run = "big.mod:run"
        """))
    (src / "big").mkdir()
    (src / "big" / "__init__.py").write_text("")
    (src / "big" / "mod.py").write_text("def run(input, ctx):\n    return input\n")
    (src / "big" / "data.bin").write_bytes(os.urandom(size))
    out = root / f"big-{version}.corral"
    pack_directory(src, out)
    shutil.rmtree(src)
    return out


def bench_publish(url: str, token: str, tmp: Path, n: int = 20) -> list[float]:
    archives = [make_plugin(tmp, f"1.0.{i}", 1024 * 1024) for i in range(n + 1)]
    times: list[float] = []
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as http:
        for i, archive in enumerate(archives):
            data = archive.read_bytes()
            t0 = time.perf_counter()
            r = http.post("/v1/publish", files={"archive": (archive.name, data)})
            elapsed = (time.perf_counter() - t0) * 1000
            if r.status_code != 201:
                raise RuntimeError(r.text)
            if i:  # the first one warms up
                times.append(elapsed)
    return times


def bench_load(url: str, threads: int = 8, per_thread: int = 250) -> None:
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    ids = ["pypi.pytest-xdist", "pypi.mkdocs", "pypi.django", "bench.big-plugin", "pypi.requests"]

    def worker(seed_: int) -> None:
        rng = random.Random(seed_)
        mine: list[float] = []
        bad = 0
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(per_thread):
                roll = rng.random()
                t0 = time.perf_counter()
                if roll < 0.6:
                    r = http.get("/v1/search", params={"q": rng.choice(QUERIES)})
                elif roll < 0.9:
                    r = http.get(f"/v1/plugins/{rng.choice(ids)}")
                else:
                    r = http.get("/v1/plugins/bench.big-plugin/download")
                mine.append((time.perf_counter() - t0) * 1000)
                bad += r.status_code != 200
        with lock:
            lat.extend(mine)
            errors[0] += bad

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - t0
    print(f"  load: {threads} threads x {per_thread} requests (60% search, 30% info, "
          f"10% 1 MB download): {len(lat) / wall:.0f} req/s, p50 {pct(lat, 50):.1f} ms, "
          f"p99 {pct(lat, 99):.1f} ms, errors {errors[0]}")
    RUN[0].record(Figure(f"load, {threads} threads: request latency", "ms", lat))
    RUN[0].value(f"load, {threads} threads: throughput ({errors[0]} errors)", len(lat) / wall,
                 "req/s")


@contextmanager
def pg_cluster() -> Iterator[str | None]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        yield None
        return
    bindir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    sock = root / "sock"
    sock.mkdir()
    runas: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        runas = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*runas, str(bindir / "initdb"), "-D", str(root / "data"), "-U", "corral",
                    "--auth=trust", "--no-sync"], check=True, capture_output=True)
    subprocess.run([*runas, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-o",
                    f"-c listen_addresses='' -k {sock} -c fsync=off -c max_connections=200",
                    "-l", str(root / "log"), "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://corral@/postgres?host={sock}"
    finally:
        subprocess.run([*runas, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m",
                        "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    global TARGET  # noqa: PLW0603 -- --quick seeds a smaller catalogue
    bench = Bench("bench_registry", __doc__)
    RUN.append(bench)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("CORRAL_CATALOGUE") or (
        Path(__file__).resolve().parents[1] / "examples" / "catalogue.tsv")
    parser.add_argument("--catalogue", type=Path, default=Path(default))
    parser.add_argument("--no-postgresql", action="store_true")
    args = parser.parse_args(bench.rest)
    if bench.quick:
        TARGET = 20_000
        args.no_postgresql = True
    tmp = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    try:
        big = tmp / "catalogue-100k.tsv"
        rows = make_catalogue(args.catalogue, big)
        print(f"catalogue: {rows} plugins ({args.catalogue.name} + generated variants)")

        data = tmp / "sqlite"
        t0 = time.perf_counter()
        with Registry.open(data) as reg:
            seed(reg, big)
            reg.create_publisher("bench")
            reg.create_namespace("bench", "bench")
            token = reg.create_token("bench")
        print(f"\nSQLite ({data / 'registry.db'}), seeded in {time.perf_counter() - t0:.1f} s")
        with server(data) as url:
            print(f"  search over {rows} plugins: "
                  f"{fmt(bench_search(url), 'SQLite: search', 'p95 <= 50 ms')}")
            print(f"  publish 1 MB plugin end to end: "
                  f"{fmt(bench_publish(url, token, tmp), 'SQLite: publish 1 MB', '<= 300 ms')}")
            bench_load(url)
        workers = max(2, os.cpu_count() or 2)
        with server(data, workers=workers) as url:
            print(f"  with --workers {workers}:")
            bench_load(url)

        if not args.no_postgresql:
            with pg_cluster() as pg:
                if pg is None:
                    print("\nPostgreSQL: binaries not installed, skipped")
                    return 0
                t0 = time.perf_counter()
                with Registry.open(tmp / "pg", pg) as reg:
                    seed(reg, big)
                    reg.create_publisher("bench")
                    reg.create_namespace("bench", "bench")
                    token = reg.create_token("bench")
                print(f"\nPostgreSQL (throwaway cluster), seeded in "
                      f"{time.perf_counter() - t0:.1f} s")
                (tmp / "pgpub").mkdir()
                with server(tmp / "pg", pg) as url:
                    print(f"  search over {rows} plugins: "
                          f"{fmt(bench_search(url), 'PostgreSQL: search', 'p95 <= 50 ms')}")
                    print(f"  publish 1 MB plugin end to end: "
                          f"{fmt(bench_publish(url, token, tmp / 'pgpub'), 'PostgreSQL: publish')}")
                    bench_load(url)
                with server(tmp / "pg", pg, workers=workers) as url:
                    print(f"  with --workers {workers}:")
                    bench_load(url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        bench.done()
    return 0


if __name__ == "__main__":
    sys.exit(main())
