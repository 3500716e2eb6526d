"""Pick one release of every plugin a request needs, with resolvelib.

Rules (the same answer whatever the order of requests or of a source's
releases): candidates are tried newest first (``packaging.Version``), except
that a ``locked`` (installed) version is tried first unless its id is in
``upgrade``; yanked releases are skipped unless some requirement pins that
exact version; pre-releases only when a range names one; releases whose
``requires-corral`` excludes the host are skipped.  When nothing fits the
error lists, for each clashing plugin, every requirer with its range and the
chain back to what the user asked for.  resolvelib is imported lazily.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

from corral._errors import ConflictError, InvalidPluginError, NotFoundError, UsageError

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
    from resolvelib.resolvers import Criterion, RequirementInformation
    from resolvelib.structs import State

    from corral._model.release import Release, Requirement, Source

__all__ = ["MAX_ROUNDS", "ResolveStats", "resolve"]

#: Rounds (one pin each) before resolvelib gives up; generous, since a round
#: costs microseconds and a 1,000-plugin graph needs about a thousand.
MAX_ROUNDS: Final = 200_000


@dataclass
class ResolveStats:
    """What one :func:`resolve` call did: for benchmarks and debugging."""

    #: Rounds resolvelib ran (one pin attempt each).
    rounds: int = 0
    #: Times a pin failed and the resolver had to backtrack.
    backtracks: int = 0
    #: Candidates rejected because their dependencies clashed.
    rejected: int = 0
    #: Plugins whose release list was read from the source.
    fetched: int = 0


class _Cand:
    """One release as a resolver candidate (one object per id and version per call)."""

    __slots__ = ("fits", "id", "label", "pre", "release", "version")

    def __init__(self, release: Release, version: Version) -> None:
        self.release = release
        self.id = release.id
        self.version = version
        self.pre = version.is_prerelease
        self.label = f"{release.id} {release.version}"
        #: range text -> whether this version is in it: resolvelib asks the
        #: same questions many times while it backtracks.
        self.fits: dict[str, bool] = {}

    def satisfies(self, req: _Req) -> bool:
        """Whether this version is in ``req``'s range (pre-releases allowed: asked for)."""
        ok = self.fits.get(req.spec)
        if ok is None:
            ok = self.fits[req.spec] = req.specset.contains(self.version, prereleases=True)
        return ok

    def __repr__(self) -> str:
        return f"<{self.label}>"


@dataclass(frozen=True, eq=False)
class _Req:
    """A range on one plugin, from the user (``parent is None``) or from a release."""

    id: str
    spec: str
    specset: SpecifierSet
    parent: _Cand | None
    #: Versions an ``==X`` in the range pins exactly: those may be yanked.
    pins: frozenset[Version] = field(default_factory=frozenset)

    @property
    def text(self) -> str:
        """``id@range`` as the user would write it."""
        return f"{self.id}@{self.spec}" if self.spec else self.id


class _Facts:
    """Per-call caches: releases read once per plugin, ranges parsed once."""

    def __init__(self, source: Source, host_version: str, stats: ResolveStats) -> None:
        from packaging.version import Version

        self.source = source
        self.host_version = host_version
        self.host = Version(host_version)
        self.stats = stats
        self._cands: dict[str, tuple[_Cand, ...] | None] = {}
        self._specs: dict[str, SpecifierSet] = {}
        self._corral_ok: dict[str, bool] = {}
        #: Every requirement seen, by plugin id: the static facts chains are built from.
        self.seen: dict[str, list[_Req]] = {}

    def candidates(self, plugin_id: str) -> tuple[_Cand, ...] | None:
        """Every release of ``plugin_id``, newest first; ``None``: the source has no such plugin."""
        if plugin_id in self._cands:
            return self._cands[plugin_id]
        from packaging.version import InvalidVersion, Version

        self.stats.fetched += 1
        try:
            releases = self.source.releases(plugin_id)
        except NotFoundError:
            self._cands[plugin_id] = None
            return None
        out = []
        for rel in releases:
            if rel.id != plugin_id:
                continue
            try:
                out.append(_Cand(rel, Version(rel.version)))
            except InvalidVersion:
                raise InvalidPluginError(
                    f"{plugin_id}: {self.source.location} lists version {rel.version!r}, "
                    "which is not a PEP 440 version",
                    plugin_id=plugin_id,
                ) from None
        out.sort(key=lambda c: (c.version, c.release.version), reverse=True)
        cands = tuple(out)
        self._cands[plugin_id] = cands
        return cands

    def seen_ids(self) -> list[str]:
        """Every plugin id whose releases were read in this call."""
        return [pid for pid, cands in self._cands.items() if cands]

    def specset(self, spec: str, where: str, plugin_id: str | None = None) -> SpecifierSet:
        """Parse ``spec`` once; ``where`` names its origin in the error."""
        try:
            return self._specs[spec]
        except KeyError:
            pass
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            parsed = SpecifierSet(spec)
        except InvalidSpecifier:
            raise InvalidPluginError(
                f"{where}: {spec!r} is not a version range", plugin_id=plugin_id
            ) from None
        self._specs[spec] = parsed
        return parsed

    def corral_ok(self, cand: _Cand) -> bool:
        """Whether ``cand``'s ``requires-corral`` admits this host (an invalid range does not)."""
        rc = cand.release.requires_corral
        if not rc:
            return True
        ok = self._corral_ok.get(rc)
        if ok is None:
            from packaging.specifiers import InvalidSpecifier, SpecifierSet

            try:
                ok = SpecifierSet(rc).contains(self.host, prereleases=True)
            except InvalidSpecifier:
                ok = False
            self._corral_ok[rc] = ok
        return ok

    def make_req(self, plugin_id: str, spec: str, parent: _Cand | None, where: str) -> _Req:
        """A :class:`_Req` with its range parsed and its exact pins noted."""
        from packaging.version import InvalidVersion, Version

        specset = self.specset(spec, where, parent.id if parent else plugin_id)
        pins = set()
        for s in specset:
            if s.operator in ("==", "===") and not s.version.endswith(".*"):
                try:
                    pins.add(Version(s.version))
                except InvalidVersion:
                    continue
        return _Req(plugin_id, spec, specset, parent, frozenset(pins))


def _allows_pre(reqs: Iterable[_Req]) -> bool:
    """Pre-releases are candidates only when some range names one (PEP 440)."""
    return any(r.specset.prereleases for r in reqs)


class _Provider:
    """The resolvelib provider (duck-typed, so resolvelib is imported only when used)."""

    def __init__(
        self,
        facts: _Facts,
        locked: Mapping[str, str],
        upgrade: Collection[str],
        pinned_elsewhere: frozenset[tuple[str, Version]] = frozenset(),
        refused: frozenset[tuple[str, Version]] = frozenset(),
    ) -> None:
        self.facts = facts
        self.locked = dict(locked)
        self.upgrade_all = "*" in upgrade
        self.upgrade = frozenset(upgrade)
        #: Yanked releases some reachable range pins exactly, allowed before that
        #: range is in play (tried last; the answer must contain such a pin).
        self.pinned_elsewhere = pinned_elsewhere
        #: Yanked releases an earlier answer held with no pin left in force: never offered.
        self.refused = refused

    def identify(self, requirement_or_candidate: _Req | _Cand) -> str:
        return requirement_or_candidate.id

    def _key(
        self,
        identifier: str,
        candidates: Mapping[str, Iterator[_Cand]],
        information: Mapping[str, Iterator[RequirementInformation[_Req, _Cand]]],
        causes: frozenset[str],
    ) -> tuple[bool, bool, bool, int, str]:
        # Conflict causes first (pip's lesson), then exact pins, then what the
        # user asked for, then the fewest candidates left (fail first); the id
        # breaks ties so no dict order leaks in.
        pinned = direct = False
        for info in information[identifier]:
            if info.requirement.pins:
                pinned = True
            if info.parent is None:
                direct = True
        left = sum(1 for _ in candidates[identifier])
        return (identifier not in causes, not pinned, not direct, left, identifier)

    @staticmethod
    def _cause_ids(
        backtrack_causes: Sequence[RequirementInformation[_Req, _Cand]],
    ) -> frozenset[str]:
        ids = set()
        for info in backtrack_causes:
            ids.add(info.requirement.id)
            if info.parent is not None:
                ids.add(info.parent.id)
        return frozenset(ids)

    def get_preference(
        self,
        identifier: str,
        resolutions: Mapping[str, _Cand],
        candidates: Mapping[str, Iterator[_Cand]],
        information: Mapping[str, Iterator[RequirementInformation[_Req, _Cand]]],
        backtrack_causes: Sequence[RequirementInformation[_Req, _Cand]],
    ) -> tuple[bool, bool, bool, int, str]:
        return self._key(identifier, candidates, information, self._cause_ids(backtrack_causes))

    def narrow_requirement_selection(
        self,
        identifiers: Iterable[str],
        resolutions: Mapping[str, _Cand],
        candidates: Mapping[str, Iterator[_Cand]],
        information: Mapping[str, Iterator[RequirementInformation[_Req, _Cand]]],
        backtrack_causes: Sequence[RequirementInformation[_Req, _Cand]],
    ) -> list[str]:
        # Pick the single best name here, in one pass: cheaper than letting
        # resolvelib call get_preference through its wrappers for every name.
        causes = self._cause_ids(backtrack_causes)
        return [min(identifiers, key=lambda i: self._key(i, candidates, information, causes))]

    def find_matches(
        self,
        identifier: str,
        requirements: Mapping[str, Iterator[_Req]],
        incompatibilities: Mapping[str, Iterator[_Cand]],
    ) -> list[_Cand]:
        cands = self.facts.candidates(identifier)
        if not cands:
            return []
        reqs = list(requirements[identifier])
        bad = {id(c) for c in incompatibilities[identifier]}
        pre = _allows_pre(reqs)
        pins = frozenset().union(*(r.pins for r in reqs))
        out = []
        later = []
        for c in cands:
            if id(c) in bad:
                continue
            if c.pre and not pre:
                continue
            if not all(c.satisfies(r) for r in reqs):
                continue
            if not self.facts.corral_ok(c):
                continue
            if c.release.yanked and (identifier, c.version) in self.refused:
                continue
            if c.release.yanked and c.version not in pins:
                if (identifier, c.version) in self.pinned_elsewhere:
                    later.append(c)
                continue
            out.append(c)
        out += later
        lock = self.locked.get(identifier)
        if lock is not None and not self.upgrade_all and identifier not in self.upgrade:
            first = [c for c in out if c.release.version == lock]
            if first:
                out = first + [c for c in out if c.release.version != lock]
        return out

    def is_satisfied_by(self, requirement: _Req, candidate: _Cand) -> bool:
        return candidate.satisfies(requirement)

    def get_dependencies(self, candidate: _Cand) -> list[_Req]:
        rel = candidate.release
        return [
            self.facts.make_req(
                dep, spec.strip(), candidate, f"{candidate.label}: dependencies.{dep}"
            )
            for dep, spec in sorted(rel.dependencies.items())
        ]


class _Reporter:
    """Counts rounds and backtracks, and records every requirement for explanations."""

    def __init__(self, facts: _Facts) -> None:
        self.facts = facts
        self.stats = facts.stats

    def starting(self) -> None:
        pass

    def starting_round(self, index: int) -> None:
        self.stats.rounds = index + 1

    def ending_round(self, index: int, state: State[_Req, _Cand, str]) -> None:
        pass

    def ending(self, state: State[_Req, _Cand, str]) -> None:
        pass

    def adding_requirement(self, requirement: _Req, parent: _Cand | None) -> None:
        self.facts.seen.setdefault(requirement.id, []).append(requirement)

    def resolving_conflicts(self, causes: Collection[RequirementInformation[_Req, _Cand]]) -> None:
        self.stats.backtracks += 1

    def rejecting_candidate(self, criterion: Criterion[_Req, _Cand], candidate: _Cand) -> None:
        self.stats.rejected += 1

    def pinning(self, candidate: _Cand) -> None:
        pass


def _root_requirements(requirements: Sequence[Requirement], facts: _Facts) -> list[_Req]:
    """The user's requests, one per id (several ranges on one id are intersected), by id."""
    by_id: dict[str, set[str]] = {}
    for req in requirements:
        by_id.setdefault(req.id, set()).add(req.spec.strip())
    out = []
    for pid in sorted(by_id):
        spec = ",".join(sorted(s for s in by_id[pid] if s))
        try:
            out.append(facts.make_req(pid, spec, None, f"requirement {pid}"))
        except InvalidPluginError as exc:
            raise UsageError(exc.message, plugin_id=pid, requirement=f"{pid}@{spec}") from None
    return out


def resolve(
    requirements: Sequence[Requirement],
    source: Source,
    *,
    host_version: str,
    locked: Mapping[str, str] | None = None,
    upgrade: Collection[str] = (),
    max_rounds: int = MAX_ROUNDS,
    stats: ResolveStats | None = None,
) -> dict[str, Release]:
    """Choose a release of every plugin ``requirements`` need, dependencies first.

    Args:
        requirements: what the user asked for; the same id twice intersects its ranges.
        source: only :meth:`Source.releases` is used, once per plugin per call.
        host_version: releases whose ``requires-corral`` excludes it are skipped.
        locked: id -> installed version, kept when still allowed (stable updates).
        upgrade: ids for which newer versions win over locked ones (``"*"``: all).
        max_rounds: resolvelib rounds before giving up.
        stats: filled with rounds, backtracks and reads, when given.

    Returns:
        id -> chosen release for every plugin needed, requested or transitive,
        each after its dependencies (ties and cycles in id order).

    Raises:
        NotFoundError: a plugin nobody can do without is unknown to the source;
            the message names who required it.
        ConflictError: no set of versions fits; ``details["conflicts"]`` lists,
            per clashing plugin, every requirer, its range and its chain.
        UsageError: a requested range is not a PEP 440 range.
        InvalidPluginError: a release's dependency range is not a PEP 440 range.
        TransferError: the source could not be read.
    """
    from resolvelib import ResolutionImpossible, ResolutionTooDeep

    stats = stats if stats is not None else ResolveStats()
    facts = _Facts(source, host_version, stats)
    roots = _root_requirements(requirements, facts)
    if not roots:
        return {}
    try:
        try:
            result = _resolve_first(facts, locked or {}, upgrade, roots, max_rounds)
        except ResolutionImpossible as exc:
            causes = cast("list[RequirementInformation[_Req, _Cand]]", list(exc.causes))
            failure = _explain(causes, roots, facts)
            # A yanked release pinned exactly by a range that was not yet in play
            # when another range on its plugin was first seen: try once more with
            # such releases allowed, and keep the answer only if a pin in it allows
            # each yanked release it holds (so the answer does not depend on order).
            elsewhere = _reachable_yanked_pins(roots, facts)
            if not elsewhere:
                raise failure from None
            provider = _Provider(facts, locked or {}, upgrade, elsewhere)
            second = None
            # First as they come; then with each release that pins such a yanked
            # release asked for as well (newest first), keeping it only if the
            # user's requests reach it: the pin must be in force in the answer.
            for extra in [None, *_pinners(elsewhere, facts)]:
                wanted = roots if extra is None else [*roots, extra]
                try:
                    found = _resolve(provider, facts, wanted, max_rounds)
                except ResolutionImpossible:
                    continue
                if _yanked_pinned(found, extra) and _reached(found, roots):
                    second = found
                    break
            if second is None:
                raise failure from None
            result = second
    except ResolutionTooDeep as exc:
        asked = ", ".join(r.text for r in roots)
        raise ConflictError(
            f"cannot install {asked}: gave up after {exc.round_count} resolution rounds "
            "without finding versions that fit together; pin some plugins to a version "
            "(ID@VERSION) to narrow the search",
            rounds=exc.round_count,
            conflicts=[],
        ) from None
    return _dependency_order({pid: c.release for pid, c in result.mapping.items()})


@dataclass(frozen=True)
class _Result:
    """What a resolution chose (``mapping``) and the ranges in force (``criteria``)."""

    mapping: dict[str, _Cand]
    criteria: Mapping[str, Any]


def _resolve(provider: _Provider, facts: _Facts, roots: Sequence[_Req], max_rounds: int) -> _Result:
    """resolvelib's resolution, keeping only the releases the roots still lead to.

    Backtracking can leave pins nothing needs any more; resolvelib's own
    ``Resolver.resolve`` prunes them by recursing along parent links, which never
    ends on a dependency cycle (``a`` needs ``b``, ``b`` needs ``a``: a
    ``RecursionError`` in resolvelib 1.2.1).  The pruning here walks the chosen
    releases' dependencies from the roots instead, visiting each plugin once.
    """
    from resolvelib.resolvers import Resolution

    state = Resolution(cast("Any", provider), cast("Any", _Reporter(facts))).resolve(
        roots, max_rounds=max_rounds)
    mapping = cast("dict[str, _Cand]", state.mapping)
    reached: dict[str, _Cand] = {}
    todo = [r.id for r in roots]
    while todo:
        pid = todo.pop()
        if pid in reached or pid not in mapping:
            continue
        reached[pid] = mapping[pid]
        todo.extend(mapping[pid].release.dependencies)
    return _Result(reached, state.criteria)


def _resolve_first(facts: _Facts, locked: Mapping[str, str], upgrade: Collection[str],
                   roots: Sequence[_Req], max_rounds: int) -> _Result:
    """The first pass: yanked releases only while a range in force pins them.

    A yanked release picked because a range pinned it can outlive that range:
    backtracking may drop the release the range came from (``p0 3.0`` yanked, pinned
    by ``p2 2.1``, which was there only for ``p0 2.1``).  Such a release is refused
    and the resolution runs again, at most once per yanked release.
    """
    refused: frozenset[tuple[str, Version]] = frozenset()
    while True:
        result = _resolve(_Provider(facts, locked, upgrade, refused=refused), facts, roots,
                          max_rounds)
        stray = frozenset((pid, c.version) for pid, c in result.mapping.items()
                          if c.release.yanked and not _pinned_in(result, pid, c))
        if not stray:
            return result
        refused |= stray


def _reachable_yanked_pins(roots: Sequence[_Req], facts: _Facts) -> frozenset[tuple[str, Version]]:
    """``(id, version)`` of yanked releases some range reachable from ``roots`` pins exactly."""
    pins: set[tuple[str, Version]] = set()
    seen: set[str] = set()
    todo = [(r.id, r.pins) for r in roots]
    while todo:
        pid, req_pins = todo.pop()
        pins.update((pid, v) for v in req_pins)
        if pid in seen:
            continue
        seen.add(pid)
        for c in facts.candidates(pid) or ():
            for dep, spec in sorted(c.release.dependencies.items()):
                req = facts.make_req(dep, spec.strip(), c, f"{c.label}: dependencies.{dep}")
                todo.append((dep, req.pins))
    return frozenset(
        (pid, c.version)
        for pid in seen
        for c in facts.candidates(pid) or ()
        if c.release.yanked and (pid, c.version) in pins
    )


def _pinners(pins: frozenset[tuple[str, Version]], facts: _Facts) -> list[_Req]:
    """``id==version`` of every release whose dependencies pin one of ``pins``, newest first."""
    out: dict[tuple[str, Version], _Req] = {}
    for pid in sorted(facts.seen_ids()):
        for c in facts.candidates(pid) or ():
            for dep, spec in c.release.dependencies.items():
                req = facts.make_req(dep, spec.strip(), c, f"{c.label}: dependencies.{dep}")
                if any((dep, v) in pins for v in req.pins):
                    out[(c.id, c.version)] = facts.make_req(
                        c.id, f"=={c.version}", None, f"{c.label} (pins {dep})")
    keys = sorted(out, key=lambda k: k[1], reverse=True)  # newest first...
    keys.sort(key=lambda k: k[0])  # ...within each id, ids in order (a stable sort)
    return [out[k] for k in keys]


def _reached(result: _Result, roots: Sequence[_Req]) -> bool:
    """Whether every plugin of ``result`` is needed by ``roots`` through the chosen releases."""
    chosen = result.mapping
    todo = [r.id for r in roots]
    needed = set(todo)
    while todo:
        for dep in chosen[todo.pop()].release.dependencies:
            if dep in chosen and dep not in needed:
                needed.add(dep)
                todo.append(dep)
    return needed == set(chosen)


def _yanked_pinned(result: _Result, extra: _Req | None = None) -> bool:
    """Each yanked release of a resolvelib result is pinned exactly by a range in force.

    A range is in force when it comes from a root or from a release the result
    keeps: a criterion still remembers ranges of releases that backtracking or
    pruning dropped, and their pins do not count.  ``extra``, a requirement the
    resolver added itself, pins nothing.
    """
    for pid, cand in result.mapping.items():
        if cand.release.yanked and not _pinned_in(result, pid, cand, extra):
            return False
    return True


def _pinned_in(result: _Result, pid: str, cand: _Cand, extra: _Req | None = None) -> bool:
    """Whether a range from a root or from a release ``result`` keeps pins ``cand``
    (``extra``, a requirement the resolver added itself, pins nothing)."""
    return any(
        cand.version in info.requirement.pins
        for info in result.criteria[pid].information
        if info.requirement is not extra
        and (info.parent is None or result.mapping.get(info.parent.id) is info.parent)
    )


def _dependency_order(chosen: Mapping[str, Release]) -> dict[str, Release]:
    """``chosen`` with every release after its dependencies; ties in id order."""
    waiting = {
        pid: {d for d in rel.dependencies if d in chosen and d != pid}
        for pid, rel in chosen.items()
    }
    users: dict[str, list[str]] = {pid: [] for pid in chosen}
    for pid, deps in waiting.items():
        for d in deps:
            users[d].append(pid)
    ready = [pid for pid, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    out: dict[str, Release] = {}
    while len(out) < len(chosen):
        if not ready:  # a cycle: release its smallest member, keep going
            heapq.heappush(ready, min(pid for pid in chosen if pid not in out))
        pid = heapq.heappop(ready)
        if pid in out:
            continue
        out[pid] = chosen[pid]
        for user in users[pid]:
            deps = waiting[user]
            deps.discard(pid)
            if not deps and user not in out:
                heapq.heappush(ready, user)
    return out


# -- explanations -------------------------------------------------------------


def _chain(cand: _Cand, facts: _Facts) -> list[str]:
    """The shortest chain of requirers from ``cand`` back to a user request.

    Built from every requirement the resolver saw: each is a static fact
    ("X 1.0 needs Y in R"), so the chain is true whatever was backtracked.
    Returns e.g. ``["acme.app 2.1.0", "acme.app@>=2"]`` for a candidate that
    ``acme.app 2.1.0`` required, itself asked for as ``acme.app@>=2``.
    """
    start = cand.label
    queue: deque[tuple[_Cand, list[str]]] = deque([(cand, [])])
    visited = {start}
    while queue:
        node, path = queue.popleft()
        reqs = [
            r
            for r in facts.seen.get(node.id, ())
            if r.specset.contains(node.version, prereleases=True)
        ]
        for r in reqs:
            if r.parent is None:
                return [*path, r.text]
        for r in sorted(reqs, key=lambda r: r.parent.label if r.parent else ""):
            parent = r.parent
            if parent is not None and parent.label not in visited:
                visited.add(parent.label)
                queue.append((parent, [*path, parent.label]))
    return []


def _chain_text(chain: Sequence[str]) -> str:
    return "(<- " + " <- ".join(chain) + " you asked for)" if chain else "(you asked for it)"


def _explain(
    causes: list[RequirementInformation[_Req, _Cand]], roots: Sequence[_Req], facts: _Facts
) -> NotFoundError | ConflictError:
    """Turn resolvelib's causes into an error a user can act on."""
    groups: dict[str, list[_Req]] = {}
    for info in causes:
        groups.setdefault(info.requirement.id, []).append(info.requirement)
    asked: set[str] = set()
    conflicts: list[dict[str, Any]] = []
    sentences: list[str] = []
    for pid in sorted(groups):
        requirers: dict[tuple[str, str], dict[str, Any]] = {}
        for req in groups[pid]:
            if req.parent is None:
                by, chain = "you", []
                asked.add(req.text)
            else:
                by, chain = req.parent.label, _chain(req.parent, facts)
                if chain:
                    asked.add(chain[-1])
            requirers.setdefault((by, req.spec), {"by": by, "range": req.spec, "chain": chain})
        ordered = sorted(requirers.values(), key=lambda r: (r["by"] != "you", r["by"], r["range"]))
        parts = []
        for r in ordered:
            rng = r["range"] or "any version"
            if r["by"] == "you":
                parts.append(f"as {rng} by you")
            else:
                parts.append(f"as {rng} by {r['by']} {_chain_text(r['chain'])}")
        said = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        cands = facts.candidates(pid)
        if cands is None:
            first = ordered[0]
            who = "you asked for it" if first["by"] == "you" else f"required {said}"
            return NotFoundError(
                f"unknown plugin {pid} in {facts.source.location}: {who}",
                plugin_id=pid,
                required_by=[
                    {"by": r["by"], "range": r["range"], "chain": r["chain"]} for r in ordered
                ],
            )
        available, notes = _availability(pid, cands, groups[pid], facts)
        sentence = f"{pid} is required {said}; available: {', '.join(available) or 'none'}"
        if notes:
            sentence += "; " + "; ".join(notes)
        sentences.append(sentence)
        conflicts.append(
            {"plugin": pid, "requirers": ordered, "available": available, "notes": notes}
        )
    what = ", ".join(sorted(asked)) or ", ".join(r.text for r in roots)
    return ConflictError(
        f"cannot install {what}: " + "; also ".join(sentences),
        plugin_id=conflicts[0]["plugin"] if conflicts else None,
        conflicts=conflicts,
    )


def _availability(
    pid: str, cands: Sequence[_Cand], reqs: Sequence[_Req], facts: _Facts
) -> tuple[list[str], list[str]]:
    """Usable versions (oldest first), and why versions that fit every range are out."""
    pins = frozenset().union(*(r.pins for r in reqs))
    pre = _allows_pre(reqs)
    available = []
    notes = []
    for c in reversed(cands):
        usable = facts.corral_ok(c) and not (c.release.yanked and c.version not in pins)
        if usable and (pre or not c.version.is_prerelease):
            available.append(c.release.version)
        fits = all(r.specset.contains(c.version, prereleases=True) for r in reqs)
        if not fits:
            continue
        if not facts.corral_ok(c):
            notes.append(
                f"{c.label} needs corral {c.release.requires_corral}, "
                f"this host is {facts.host_version}"
            )
        elif c.release.yanked and c.version not in pins:
            notes.append(
                f"{c.label} is yanked (ask for {pid}@=={c.release.version} to use it anyway)"
            )
        elif c.version.is_prerelease and not pre:
            notes.append(f"{c.label} is a pre-release (name it in the range to allow it)")
    return available, notes
