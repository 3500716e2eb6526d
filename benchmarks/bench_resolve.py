"""Dependency resolution figures on a generated 1,000-plugin graph.

The graph is seeded (the same on every run): 1,000 plugins of 3-8 versions,
0-5 dependencies each with PEP 440 ranges, layered so that apps depend on
mid-level plugins and on 40 popular libraries.  Conflicts force backtracking:
the newest release of each popular library needs the newest major of another
one, while most of its users cap that other library below its newest major,
and some apps' newest releases need a library range nothing else allows.

Requests of 1, 10 and 50 top-level plugins are resolved with
``corral._distribution.resolver.resolve`` (median and max wall time, rounds, backtracks),
next to two baselines on the same graph: resolvelib with a trivial provider
(no caches, newest first, preference by name) and a greedy newest-version pick
that never backtracks (fast, but its answer breaks ranges).  Target: <= 2 s.

Run it with the virtualenv's interpreter, e.g.
``python benchmarks/bench_resolve.py [--quick] [--json FILE] [--runs N]`` (the harness).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from harness import Bench, Figure  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402
from packaging.version import Version  # noqa: E402

from corral._distribution.resolver import ResolveStats, resolve  # noqa: E402
from corral._errors import ConflictError, NotFoundError  # noqa: E402
from corral._model.release import Release, Requirement  # noqa: E402

N_PLUGINS = 1000
N_LIBS = 40
N_APPS = 200
HOST = "0.1.0"
TARGET_S = 2.0
#: Share of popular libraries whose newest release needs another one's newest
#: major (which most users cap away).  At 1.0 (all 40) resolvelib's search
#: blows up on 50 requests: see the report printed with --clash 1.
CLASHING_LIBS = 0.25


class MemorySource:
    """An in-memory :class:`corral._model.release.Source` (releases only)."""

    location = "memory"

    def __init__(self, releases: Sequence[Release]) -> None:
        self.plugins: dict[str, list[Release]] = {}
        for rel in releases:
            self.plugins.setdefault(rel.id, []).append(rel)

    def releases(self, plugin_id: str) -> Sequence[Release]:
        try:
            return self.plugins[plugin_id]
        except KeyError:
            raise NotFoundError(f"no plugin {plugin_id}", plugin_id=plugin_id) from None

    def fetch(self, release: Release, dest_dir: Path, progress: Any = None) -> Path:
        raise NotImplementedError


def pid(i: int) -> str:
    return f"bench.p{i:04d}"


def versions_of(rnd: random.Random) -> list[str]:
    """3-8 versions over up to 3 majors, oldest first."""
    out: list[str] = []
    major, minor = 1, 0
    for _ in range(rnd.randint(3, 8)):
        out.append(f"{major}.{minor}.0")
        if rnd.random() < 0.3:
            major, minor = major + 1, 0
        else:
            minor += 1
    return out


def around(rnd: random.Random, vs: Sequence[str], target: str, cap: bool) -> str:
    """A range on a plugin with versions ``vs`` that contains ``target``.

    ``cap``: also exclude the newest major when ``target`` is below it (what
    most users of a library that broke its API do).
    """
    t = Version(target)
    newest = Version(vs[-1])
    low = Version(rnd.choice([v for v in vs if Version(v) <= t]))
    if cap and t.major < newest.major:
        return f">={low},<{newest.major}"
    kind = rnd.random()
    if kind < 0.5:
        return f">={low}"
    if kind < 0.8 and low.major == t.major:
        return f">={low},<{t.major + 1}"
    if kind < 0.9 and low.major == t.major:
        return f"~={low.major}.{low.minor}"
    return ""


def make_graph(seed: int = 20240611) -> list[Release]:
    """The seeded 1,000-plugin graph (dependencies only point to higher indexes).

    A solution is planted: one version of every plugin whose ranges all hold
    together (for popular libraries an older one), so every request has an
    answer, but the newest releases clash and the resolver must backtrack.
    """
    rnd = random.Random(seed)
    vers = {i: versions_of(rnd) for i in range(N_PLUGINS)}
    libs = list(range(N_PLUGINS - N_LIBS, N_PLUGINS))
    planted = {
        i: rnd.choice(vers[i][:-1]) if i in libs else rnd.choice(vers[i][-2:])
        for i in range(N_PLUGINS)
    }
    releases: list[Release] = []
    for i in range(N_PLUGINS):
        # The plugins this one uses (its releases agree on them, as in real life).
        uses: list[int] = []
        for _ in range(rnd.randint(0, 5)):
            lower_libs = [j for j in libs if j > i]
            if lower_libs and rnd.random() < 0.5:
                uses.append(rnd.choice(lower_libs))
            elif i < N_PLUGINS - N_LIBS - 1:
                uses.append(rnd.randint(i + 1, N_PLUGINS - N_LIBS - 1))
        for v in vers[i]:
            newest = v == vers[i][-1]
            deps: dict[str, str] = {}
            for j in sorted(set(uses)):
                deps[pid(j)] = around(rnd, vers[j], planted[j], cap=j in libs)
            if newest and v != planted[i]:
                if i in libs and rnd.random() < CLASHING_LIBS:
                    # The newest release of a popular library needs another's newest major.
                    others = [j for j in libs if j > i]
                    if others:
                        j = rnd.choice(others)
                        deps[pid(j)] = f">={Version(vers[j][-1]).major}"
                elif rnd.random() < 0.2:
                    j = rnd.choice(libs)
                    deps[pid(j)] = f">={vers[j][-1]}"  # clashes with the capped users
            releases.append(Release(pid(i), v, dependencies=deps))
    return releases


# -- baselines ------------------------------------------------------------------------


def greedy(requirements: Sequence[Requirement], source: MemorySource) -> tuple[dict[str, str], int]:
    """Newest version meeting the first range seen, breadth first, never backtracking.

    Returns the pick and how many ranges it breaks.
    """
    chosen: dict[str, Release] = {}
    queue = [(r.id, r.spec) for r in requirements]
    ranges: list[tuple[str, str]] = []
    while queue:
        name, spec = queue.pop(0)
        ranges.append((name, spec))
        if name in chosen:
            continue
        fits = [r for r in source.releases(name) if Version(r.version) in SpecifierSet(spec)]
        best = max(fits or source.releases(name), key=lambda r: Version(r.version))
        chosen[name] = best
        queue.extend(sorted(best.dependencies.items()))
    broken = sum(Version(chosen[n].version) not in SpecifierSet(s) for n, s in ranges)
    return {n: r.version for n, r in chosen.items()}, broken


def trivial_resolvelib(requirements: Sequence[Requirement], source: MemorySource) -> str:
    """resolvelib with the simplest correct provider (5,000 rounds at most): what it did."""
    from resolvelib import AbstractProvider, BaseReporter, Resolver

    class Provider(AbstractProvider):  # type: ignore[type-arg]
        def identify(self, requirement_or_candidate: Any) -> str:
            return str(requirement_or_candidate[0])

        def get_preference(self, identifier: str, *args: Any, **kw: Any) -> str:
            return identifier

        def find_matches(
            self,
            identifier: str,
            requirements: Mapping[str, Iterator[Any]],
            incompatibilities: Mapping[str, Iterator[Any]],
        ) -> list[Any]:
            bad = {c[1] for c in incompatibilities[identifier]}
            specs = [SpecifierSet(r[1]) for r in requirements[identifier]]
            cands = [
                (identifier, r.version, r)
                for r in source.releases(identifier)
                if r.version not in bad and all(Version(r.version) in s for s in specs)
            ]
            return sorted(cands, key=lambda c: Version(c[1]), reverse=True)

        def is_satisfied_by(self, requirement: Any, candidate: Any) -> bool:
            return Version(candidate[1]) in SpecifierSet(requirement[1])

        def get_dependencies(self, candidate: Any) -> list[Any]:
            return sorted(candidate[2].dependencies.items())

    from resolvelib import ResolutionError

    resolver: Resolver[Any, Any, Any] = Resolver(Provider(), BaseReporter())
    try:
        result = resolver.resolve([(r.id, r.spec) for r in requirements], max_rounds=5000)
    except ResolutionError as exc:
        return f"gave up ({type(exc).__name__})"
    return f"{len(result.mapping)} plugins picked"


# -- measurement ------------------------------------------------------------------------


def requests(n: int, seed: int) -> list[Requirement]:
    rnd = random.Random(seed)
    return [Requirement(pid(i)) for i in sorted(rnd.sample(range(N_APPS), n))]


def timed(fn: Callable[[], object], runs: int) -> tuple[list[float], object]:
    out: list[float] = []
    value: object = None
    for _ in range(runs):
        t = time.perf_counter()
        try:
            value = fn()
        except ConflictError as exc:
            value = exc
        out.append(time.perf_counter() - t)
    return out, value


def ms(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:8.1f} ms  max {max(xs) * 1000:8.1f} ms"


def main() -> None:
    bench = Bench("bench_resolve", __doc__)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=bench.repeats)
    args = parser.parse_args(bench.rest)

    t = time.perf_counter()
    releases = make_graph()
    source = MemorySource(releases)
    n_deps = sum(len(r.dependencies) for r in releases)
    print(
        f"graph: {N_PLUGINS} plugins, {len(releases)} releases, {n_deps} dependency ranges "
        f"(built in {(time.perf_counter() - t) * 1000:.0f} ms); {args.runs} runs each\n"
    )
    worst = 0.0
    for n in (1, 10, 50):
        reqs = requests(n, seed=n)

        def ours(reqs: list[Requirement] = reqs) -> object:
            return resolve(reqs, source, host_version=HOST)

        def trivial(reqs: list[Requirement] = reqs) -> object:
            return trivial_resolvelib(reqs, source)

        def naive(reqs: list[Requirement] = reqs) -> object:
            return greedy(reqs, source)

        stats = ResolveStats()
        resolve(reqs, source, host_version=HOST, stats=stats)  # warm-up and counters
        times, value = timed(ours, args.runs)
        worst = max(worst, *times)
        outcome = (
            f"conflict: {str(value)[:60]}..."
            if isinstance(value, ConflictError)
            else f"{len(cast('dict[str, Release]', value))} plugins picked"
        )
        print(f"{n:3d} requested  corral resolve        {ms(times)}  {outcome}")
        ours_fig = bench.record(Figure(f"{n} requested: corral resolve", "ms",
                                       [x * 1000 for x in times], f"<= {TARGET_S * 1000:.0f} ms"))
        print(
            f"{'':15}rounds {stats.rounds}, backtracks {stats.backtracks}, "
            f"rejected candidates {stats.rejected}, plugins read {stats.fetched}"
        )
        t_triv, v_triv = timed(trivial, max(1, args.runs // 2))
        print(f"{'':15}resolvelib, trivial  {ms(t_triv)}  {v_triv}")
        triv_fig = bench.record(Figure(f"{n} requested: resolvelib, trivial provider", "ms",
                                       [x * 1000 for x in t_triv]))
        bench.ratio(ours_fig, triv_fig)
        t_greedy, v_greedy = timed(naive, args.runs)
        picked, broken = cast("tuple[dict[str, str], int]", v_greedy)
        print(
            f"{'':15}greedy newest        {ms(t_greedy)}  {len(picked)} plugins picked, "
            f"{broken} ranges broken"
        )
    verdict = "OK" if worst <= TARGET_S else "OVER TARGET"
    target = f"target <= {TARGET_S * 1000:.0f} ms"
    print(f"\nworst corral resolve: {worst * 1000:.1f} ms ({target}) {verdict}")
    bench.done()


if __name__ == "__main__":
    main()
