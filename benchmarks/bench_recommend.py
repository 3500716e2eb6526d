"""Recommendation quality: k-fold leave-one-out hit@5 / hit@10 against two baselines.

The rows of a co-usage file are split into k folds.  For each fold the
recommender learns from the other folds; for each held-out project, each of its
plugins is hidden in turn and the rest is asked for recommendations: a hit@N
when the hidden plugin is among the first N.  Beside it, on the same queries:

* popularity: the most popular plugins of the project's family (``popularity_rank``
  of the catalogue) not already in the set; a plugin is of a family by its name
  (``pytest-*``) or by being used in the training folds' projects of that family
  (``furo`` in sphinx projects);
* popularity by name: the same with the family known from the name only;
* co-occurrence: plain pair counts with the rest of the set (ties by popularity).

Target: hit@10 at least 1.25 times the popularity baseline.  ``--grid`` prints the
cross-validated figures of a small grid of parameters (how the defaults were chosen).
``--latency`` seeds a registry (SQLite) with the catalogue and the sets and prints the
time to build the recommender, to warm it, and p50/p95 of a request after that, beside
a plain search of the same registry as the anchor.

Each k-fold split is one sample of each quality figure (median and spread over the
splits, through the harness; the pooled rates are printed too); ``--quick`` runs one
split.

``python benchmarks/bench_recommend.py [--quick] [--json FILE] [--catalogue FILE]
[--cousage FILE] [--folds N] [--seeds N] [--grid] [--latency]`` (see benchmarks/harness.py;
defaults: ``$CORRAL_CATALOGUE`` or examples/catalogue.tsv, examples/cousage.tsv).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import Bench, Figure

from corral._analytics.recommend import (
    CoUsage,
    Item,
    Params,
    Recommender,
    UsageSet,
)
from corral.registry._insights.cousage import CoUsageRow, read_cousage
from corral.registry._names import ecosystem_of, normalise_name
from corral.registry._seed import downloads_for_rank, read_catalogue

ROOT = Path(__file__).resolve().parents[1]

TARGET = 1.25


def load_items(catalogue: Path) -> dict[str, Item]:
    items: dict[str, Item] = {}
    for row in read_catalogue(catalogue):
        norm = normalise_name(row.get("name", ""))
        if not norm or norm in items:
            continue
        eco = ecosystem_of(norm)
        items[norm] = Item(id=norm, name=norm, family=eco[0] if eco else None,
                           category=eco[1] if eco else None, summary=row.get("summary", ""),
                           popularity=float(downloads_for_rank(row.get("popularity_rank"))))
    return items


def folds(rows: list[CoUsageRow], k: int, seed: int) -> list[list[CoUsageRow]]:
    order = list(rows)
    random.Random(seed).shuffle(order)
    return [order[i::k] for i in range(k)]


@dataclasses.dataclass
class Hits:
    n: int = 0
    at5: int = 0
    at10: int = 0

    def add(self, ranked: list[str], hidden: str) -> None:
        self.n += 1
        self.at5 += hidden in ranked[:5]
        self.at10 += hidden in ranked[:10]

    def rate(self, at: int) -> float:
        return (self.at5 if at == 5 else self.at10) / max(self.n, 1)


def _popular(items: dict[str, Item], ids: list[str]) -> list[str]:
    """The 60 most downloaded of ``ids`` (catalogue popularity), best first."""
    return sorted(set(ids), key=lambda x: (
        -(items[x].popularity if x in items else 0.0), x))[:60]


def evaluate(items: dict[str, Item], rows: list[CoUsageRow], k: int, seed: int,
             params: Params, baselines: bool = True) -> dict[str, Hits]:
    out = {"recommender": Hits(), "popularity": Hits(), "popularity by name": Hits(),
           "co-occurrence": Hits()}
    parts = folds(rows, k, seed)
    for i, test in enumerate(parts):
        train = [r for j, part in enumerate(parts) if j != i for r in part]
        usage = CoUsage(UsageSet(frozenset(r.plugins), r.family) for r in train)
        rec = Recommender(items, usage, params)
        family_pool: dict[str, list[str]] = collections.defaultdict(list)
        for item in items.values():
            if item.family:
                family_pool[item.family].append(item.id)
        for fam, counts in usage.family_count.items():
            family_pool[fam].extend(c for c in counts if c not in items or
                                    items[c].family != fam)
        by_name = {fam: _popular(items, [i for i in ids if i in items and
                                         items[i].family == fam])
                   for fam, ids in family_pool.items()}
        by_pop = {fam: _popular(items, ids) for fam, ids in family_pool.items()}
        for row in test:
            for hidden in row.plugins:
                rest = [p for p in row.plugins if p != hidden]
                got = [r.id for r in rec.recommend(rest, limit=10)]
                out["recommender"].add(got, hidden)
                if not baselines:
                    continue
                owned = set(rest)
                pop = [c for c in by_pop.get(row.family or "", [])[:40] if c not in owned][:10]
                out["popularity"].add(pop, hidden)
                named = [c for c in by_name.get(row.family or "", []) if c not in owned][:10]
                out["popularity by name"].add(named, hidden)
                co: collections.Counter[str] = collections.Counter()
                for s in rest:
                    for c, n in usage.pairs.get(s, {}).items():
                        if c not in owned:
                            co[c] += int(n)
                plain = sorted(co, key=lambda c: (-co[c], -(items[c].popularity
                                                            if c in items else 0.0), c))[:10]
                out["co-occurrence"].add(plain, hidden)
    return out


def main() -> int:
    bench = Bench("bench_recommend", __doc__)
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalogue", type=Path, default=Path(
        os.environ.get("CORRAL_CATALOGUE") or ROOT / "examples" / "catalogue.tsv"))
    ap.add_argument("--cousage", type=Path, default=ROOT / "examples" / "cousage.tsv")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=1 if bench.quick else 3,
                    help="repeat the k-fold split this often (default 3, --quick 1)")
    ap.add_argument("--grid", action="store_true", help="also print a small parameter grid")
    ap.add_argument("--latency", action="store_true",
                    help="also time requests on a registry seeded with the catalogue")
    args = ap.parse_args(bench.rest)
    started = time.perf_counter()
    items = load_items(args.catalogue)
    rows = read_cousage(args.cousage)
    print(f"catalogue: {len(items)} plugins; co-usage: {len(rows)} sets; "
          f"{args.folds}-fold x {args.seeds} splits")
    total = {"recommender": Hits(), "popularity": Hits(), "popularity by name": Hits(),
             "co-occurrence": Hits()}
    per_split: dict[tuple[str, int], list[float]] = {(name, at): [] for name in total
                                                     for at in (5, 10)}
    for seed in range(args.seeds):
        res = evaluate(items, rows, args.folds, seed, Params())
        for name, h in res.items():
            per_split[name, 5].append(h.rate(5))
            per_split[name, 10].append(h.rate(10))
            t = total[name]
            t.n += h.n
            t.at5 += h.at5
            t.at10 += h.at10
        r, b = res["recommender"], res["popularity"]
        print(f"  split {seed}: hit@10 {r.rate(10):.3f} vs popularity {b.rate(10):.3f} "
              f"({r.rate(10) / max(b.rate(10), 1e-9):.2f}x)")
    base = total["popularity"]
    print(f"{'method':18s} {'hit@5':>7s} {'hit@10':>7s} {'x pop@5':>8s} {'x pop@10':>9s}")
    for name, h in total.items():
        print(f"{name:18s} {h.rate(5):7.3f} {h.rate(10):7.3f} "
              f"{h.rate(5) / max(base.rate(5), 1e-9):8.2f} "
              f"{h.rate(10) / max(base.rate(10), 1e-9):9.2f}")
    ratio = total["recommender"].rate(10) / max(base.rate(10), 1e-9)
    print(f"queries: {total['recommender'].n}; hit@10 ratio {ratio:.2f} "
          f"(target >= {TARGET}): {'met' if ratio >= TARGET else 'NOT met'}")
    bench.section(f"per split ({args.seeds} splits): median and spread over the splits")
    figs = {key: bench.record(Figure(f"{key[0]} hit@{key[1]}", f"hit@{key[1]}", samples,
                                     target=f">= {TARGET}x popularity" if key == (
                                         "recommender", 10) else ""))
            for key, samples in per_split.items()}
    for at in (5, 10):
        bench.ratio(figs["recommender", at], figs["popularity", at],
                    target=f">= {TARGET}" if at == 10 else "",
                    label=f"recommender / popularity, hit@{at}")
    bench.ratio(figs["recommender", 10], figs["co-occurrence", 10],
                label="recommender / co-occurrence, hit@10")
    if args.grid:
        print("grid (hit@10, mean over splits):")
        default = Params()
        for change in _grid():
            params = dataclasses.replace(default, **change)
            hits = Hits()
            for seed in range(args.seeds):
                h = evaluate(items, rows, args.folds, seed, params, baselines=False)[
                    "recommender"]
                hits.n += h.n
                hits.at10 += h.at10
                hits.at5 += h.at5
            print(f"  {change}: hit@5 {hits.rate(5):.3f} hit@10 {hits.rate(10):.3f}")
    if args.latency:
        latency(bench, args.catalogue, args.cousage, rows)
    print(f"({time.perf_counter() - started:.1f} s)")
    bench.done()
    return 0


def latency(bench: Bench, catalogue: Path, cousage: Path, rows: list[CoUsageRow]) -> None:
    import statistics
    import tempfile

    from corral.registry._insights import Insights
    from corral.registry._search import SearchParams
    from corral.registry._seed import seed
    from corral.registry._service import Registry

    with tempfile.TemporaryDirectory() as tmp:
        reg = Registry.open(tmp)
        try:
            seed(reg, catalogue)
            insights = Insights(reg)
            insights.seed_cousage(cousage)
            t = time.perf_counter()
            insights.recommendations.model()
            built = time.perf_counter() - t
            t = time.perf_counter()
            insights.recommendations.warm()
            warmed = time.perf_counter() - t
            asks = [["pypi." + p for p in r.plugins[:3]] for r in rows[::4]]
            took: list[float] = []
            anchor: list[float] = []
            for n, ask in enumerate(asks[:bench.warmup] + asks):
                t = time.perf_counter()
                insights.recommend(ask, 10, "1.0.0")
                t1 = time.perf_counter()
                reg.search(SearchParams(q=ask[0].split(".", 1)[1]))
                t2 = time.perf_counter()
                if n >= bench.warmup:
                    took.append(t1 - t)
                    anchor.append(t2 - t1)
            q = statistics.quantiles(took, n=20)
            a = statistics.quantiles(anchor, n=20)
            bench.section(f"latency on {len(asks)} requests, one sample each")
            bench.value("build the recommender", built, "s")
            bench.value("warm it", warmed, "s")
            rec = bench.record(Figure("recommend, 10 results", "ms", [1000 * x for x in took],
                                      note=f"p95 {1000 * q[18]:.1f} ms"))
            search = bench.record(Figure("plain search of the same registry (anchor)", "ms",
                                         [1000 * x for x in anchor],
                                         note=f"p95 {1000 * a[18]:.1f} ms"))
            bench.ratio(rec, search)
        finally:
            reg.close()


def _grid() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}]
    for key, values in (("min_support", (1.0, 3.0)), ("rare_weight", (0.0, 1.0)),
                        ("alpha", (0.3, 0.7, 1.0)),
                        ("shrink", (0.0, 1.0, 6.0)), ("w_family", (0.0, 0.25, 1.0)),
                        ("w_popularity", (0.0, 0.15)), ("w_content", (0.0, 0.4))):
        out.extend({key: v} for v in values)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
