"""Community figures on a seeded catalogue: what a review costs, and the rating sort.

* writing a review (install proof checked, the Bayesian averages of every rated
  plugin recomputed) beside recording an install (a plain small write) in the
  same run: p50/p95 of each and their ratio;
* search sorted by rating (the Bayesian average) beside sorted by downloads,
  both through the service on the same database: p50/p95 and the ratio.

Run with the virtualenv's interpreter:
``.venv/bin/python benchmarks/bench_community.py [--catalogue FILE] [--reviews N]``
(default catalogue: ``$CORRAL_CATALOGUE`` or ``examples/catalogue.tsv``).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from corral.registry._community.service import Community  # noqa: E402
from corral.registry._search import SearchParams  # noqa: E402
from corral.registry._seed import seed  # noqa: E402
from corral.registry._service import Registry  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _line(name: str, ms: list[float]) -> str:
    return f"{name:<34} p50 {statistics.median(ms):7.2f} ms   p95 {_pct(ms, 0.95):7.2f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalogue", type=Path, default=Path(
        os.environ.get("CORRAL_CATALOGUE") or ROOT / "examples" / "catalogue.tsv"))
    ap.add_argument("--reviews", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reg = Registry.open(Path(tmp) / "data")
        counts = seed(reg, args.catalogue)
        community = Community(reg)
        with reg.read() as conn:
            import sqlalchemy as sa

            from corral.registry import _db

            ids = list(conn.execute(sa.select(_db.plugins.c.id)
                                    .where(_db.plugins.c.latest_version.is_not(None))
                                    ).scalars())
        rnd = random.Random(7)
        people = [community.signup(f"bench-{i}", "bench password", client=f"10.0.{i // 250}."
                                   f"{i % 250}") for i in range(args.reviews // 5 + 1)]
        installs: list[float] = []
        writes: list[float] = []
        for n in range(args.reviews):
            who = people[n % len(people)]
            plugin = rnd.choice(ids[:2000])
            t = time.perf_counter()
            community.record_install(who, plugin)
            installs.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            try:
                community.post_review(who, plugin, rnd.randint(1, 5), "benchmark review")
            except Exception as exc:  # the per-account hourly limit: next person
                if "too many" not in str(exc):
                    raise
                continue
            writes.append((time.perf_counter() - t) * 1000)
        by_rating: list[float] = []
        by_downloads: list[float] = []
        for q in ["", "test", "django", "docs", "plugin"] * 20:
            for sort, into in (("rating", by_rating), ("downloads", by_downloads)):
                t = time.perf_counter()
                reg.search(SearchParams(q=q, sort=sort, per_page=20))
                into.append((time.perf_counter() - t) * 1000)
        prior = community.rating_prior()
        reg.close()
    print(f"catalogue: {args.catalogue.name}, {counts['added']} plugins; "
          f"{len(writes)} reviews on {prior['rated_plugins']} plugins "
          f"(prior mean {prior['mean']:.2f}, weight {prior['weight']:.2f})")
    print(_line("record an install (anchor)", installs))
    print(_line("write a review", writes))
    print(f"{'ratio review / install (p50)':<34} "
          f"{statistics.median(writes) / statistics.median(installs):7.2f}")
    print(_line("search sort=downloads (anchor)", by_downloads))
    print(_line("search sort=rating (Bayesian)", by_rating))
    print(f"{'ratio rating / downloads (p50)':<34} "
          f"{statistics.median(by_rating) / statistics.median(by_downloads):7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
