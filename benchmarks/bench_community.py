"""Community figures on a seeded catalogue: what a review costs, and the rating sort.

* writing a review (install proof checked, the Bayesian averages of every rated
  plugin recomputed) beside recording an install (a plain small write) in the
  same run: median, spread and p95 of each and their ratio;
* search sorted by rating (the Bayesian average) beside sorted by downloads,
  both through the service on the same database, alternating query by query:
  median, spread, p95 and the ratio.

Each sample is one operation (a review changes the state, so it cannot be
repeated); the harness's warm-up count of each runs first, untimed.

``python benchmarks/bench_community.py [--quick] [--json FILE] [--catalogue FILE] [--reviews N]``
(see benchmarks/harness.py; default catalogue: ``$CORRAL_CATALOGUE`` or
``examples/catalogue.tsv``).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import Bench, Figure

from corral.registry import _db
from corral.registry._community.service import Community
from corral.registry._search import SearchParams
from corral.registry._seed import seed
from corral.registry._service import Registry

ROOT = Path(__file__).resolve().parents[1]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _record(bench: Bench, name: str, ms: list[float], target: str = "") -> Figure:
    fig = bench.record(Figure(name, "ms", ms, target=target,
                              note=f"p95 {_pct(ms, 0.95):.2f} ms; one operation a sample"))
    print(f"    p95 {_pct(ms, 0.95):.2f} ms, n {len(ms)}")
    return fig


def main() -> int:
    bench = Bench("bench_community", __doc__)
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalogue", type=Path, default=Path(
        os.environ.get("CORRAL_CATALOGUE") or ROOT / "examples" / "catalogue.tsv"))
    ap.add_argument("--reviews", type=int, default=60 if bench.quick else 300)
    args = ap.parse_args(bench.rest)
    with tempfile.TemporaryDirectory() as tmp:
        reg = Registry.open(Path(tmp) / "data")
        counts = seed(reg, args.catalogue)
        community = Community(reg)
        with reg.read() as conn:
            ids = list(conn.execute(sa.select(_db.plugins.c.id)
                                    .where(_db.plugins.c.latest_version.is_not(None))
                                    ).scalars())
        rnd = random.Random(7)
        total = args.reviews + bench.warmup
        people = [community.signup(f"bench-{i}", "bench password", client=f"10.0.{i // 250}."
                                   f"{i % 250}") for i in range(total // 5 + 1)]
        installs: list[float] = []
        writes: list[float] = []
        for n in range(total):
            who = people[n % len(people)]
            plugin = rnd.choice(ids[:2000])
            t = time.perf_counter()
            community.record_install(who, plugin)
            took = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            try:
                community.post_review(who, plugin, rnd.randint(1, 5), "benchmark review")
            except Exception as exc:  # the per-account hourly limit: next person
                if "too many" not in str(exc):
                    raise
                continue
            if n >= bench.warmup:
                installs.append(took)
                writes.append((time.perf_counter() - t) * 1000)
        queries = ["", "test", "django", "docs", "plugin"] * (4 if bench.quick else 20)
        by_rating: list[float] = []
        by_downloads: list[float] = []
        for n, q in enumerate(queries[:bench.warmup] + queries):
            for sort, into in (("rating", by_rating), ("downloads", by_downloads)):
                t = time.perf_counter()
                reg.search(SearchParams(q=q, sort=sort, per_page=20))
                if n >= bench.warmup:
                    into.append((time.perf_counter() - t) * 1000)
        prior = community.rating_prior()
        reg.close()
    bench.section(f"catalogue {args.catalogue.name}, {counts['added']} plugins; "
                  f"{len(writes)} reviews on {prior['rated_plugins']} plugins "
                  f"(prior mean {prior['mean']:.2f}, weight {prior['weight']:.2f})")
    install = _record(bench, "record an install (anchor)", installs)
    review = _record(bench, "write a review", writes)
    bench.ratio(review, install, label="review / install")
    bench.section(f"search, 20 a page ({len(queries)} queries each, alternating)")
    downloads = _record(bench, "search sort=downloads (anchor)", by_downloads)
    rating = _record(bench, "search sort=rating (Bayesian)", by_rating)
    bench.ratio(rating, downloads, label="rating / downloads")
    bench.done()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
