"""Recommendations that explain themselves: "used together" from co-usage sets, with reasons.

The score of a candidate ``c`` for a set ``S`` the user has is the sum of three parts:

- association: for each ``s`` in ``S`` used with ``c`` in at least ``min_support``
  (weighted) sets, ``co(s, c) / ((n_s + k) ** alpha * (n_c + k) ** (1 - alpha))`` -
  co-occurrence normalised by how common both are (``alpha = 0.5`` is the cosine),
  with a shrinkage constant ``k`` so that a pair seen twice among rare plugins does
  not outrank a pair seen forty times;
- a back-off within the family of ``S``: the share of that family's sets using ``c``
  and its download popularity, so that a set with no known pairs still gets the
  family's staples;
- content similarity (TF-IDF over name words and summary) to a member of ``S``,
  within its family or category, so that a plugin nobody has reported yet can be found.

Pairs under the minimum support never contribute and are never shown.  Every
recommendation carries its reasons in plain words with the real figures
(confidence and lift of the pair, the family share, the similar plugin).
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CoUsage",
    "Item",
    "Params",
    "Recommendation",
    "Recommender",
    "UsageSet",
    "tokens",
]

_WORD: Final = re.compile(r"[a-z0-9]+")
#: Words that say nothing about what a plugin does.
_STOP: Final = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "into", "is", "it",
    "its", "of", "on", "or", "the", "this", "to", "with", "without", "your", "you", "via",
    "using", "use", "plugin", "plugins", "extension", "extensions", "package", "python",
    "support", "library", "module", "tool", "tools", "simple", "based", "add", "adds",
    "provides", "provide",
))


def tokens(text: str) -> list[str]:
    """Lowercase content words of ``text`` (stop words dropped, a plural ``s`` folded)."""
    out = []
    for word in _WORD.findall(text.lower()):
        if word in _STOP or len(word) < 2 or word.isdigit():
            continue
        plural = len(word) > 4 and word.endswith("s") and not word.endswith("ss")
        out.append(word[:-1] if plural else word)
    return out


@dataclass(frozen=True, slots=True)
class Item:
    """A plugin the recommender may speak of.

    ``family`` is its ecosystem (``pytest``, ``django``...); ``popularity`` any
    monotone figure of use (downloads); ``name`` is what reasons call it.
    """

    id: str
    name: str = ""
    family: str | None = None
    category: str | None = None
    summary: str = ""
    popularity: float = 0.0

    @property
    def label(self) -> str:
        return self.name or self.id


@dataclass(frozen=True, slots=True)
class UsageSet:
    """Plugins used together by one project (or one host's report), with a weight."""

    ids: frozenset[str]
    family: str | None = None
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Params:
    """The recommender's knobs (chosen by cross-validation, see benchmarks/bench_recommend.py)."""

    #: A pair must be seen in at least this many (weighted) sets to be shown as a reason.
    min_support: float = 2.0
    #: What a pair under the minimum support adds to a score (never shown; a pick still
    #: needs a reason of its own).
    rare_weight: float = 0.5
    #: Normalisation exponent of the pair score (0.5: cosine, 1: confidence).
    alpha: float = 1.0
    #: Shrinkage added to both counts before normalising.
    shrink: float = 3.0
    #: Weight of the family back-off (share of the family's sets using the candidate).
    w_family: float = 0.5
    #: Weight of download popularity within the family.
    w_popularity: float = 0.05
    #: Weight of content similarity.
    w_content: float = 0.15
    #: Similarities under this are not content neighbours.
    min_similarity: float = 0.2
    #: Neighbours kept per plugin for content similarity.
    neighbours: int = 30


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One recommended plugin, its score and why."""

    id: str
    score: float
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.score, 4), "reasons": list(self.reasons)}


class CoUsage:
    """Counts learned from co-usage sets: per plugin, per pair, per family (weighted)."""

    def __init__(self, sets: Iterable[UsageSet] = ()) -> None:
        self.total = 0.0
        self.count: dict[str, float] = collections.defaultdict(float)
        self.pairs: dict[str, dict[str, float]] = collections.defaultdict(
            lambda: collections.defaultdict(float))
        self.family_sets: dict[str, float] = collections.defaultdict(float)
        self.family_count: dict[str, dict[str, float]] = collections.defaultdict(
            lambda: collections.defaultdict(float))
        #: Pair weights with each set damped by its size (a set of forty says less per pair).
        self.damped: dict[str, dict[str, float]] = collections.defaultdict(
            lambda: collections.defaultdict(float))
        for s in sets:
            self.add(s)

    def add(self, s: UsageSet) -> None:
        """Learn one set."""
        ids = sorted(s.ids)
        if len(ids) < 2 or s.weight <= 0:
            return
        w = s.weight
        self.total += w
        if s.family:
            self.family_sets[s.family] += w
        dw = w / math.sqrt(len(ids) - 1)
        for i, a in enumerate(ids):
            self.count[a] += w
            if s.family:
                self.family_count[s.family][a] += w
            row, drow = self.pairs[a], self.damped[a]
            for b in ids[i + 1:]:
                row[b] += w
                self.pairs[b][a] += w
                drow[b] += dw
                self.damped[b][a] += dw

    def family_of(self, plugin_id: str) -> str | None:
        """The family whose sets use ``plugin_id`` most (None if never seen)."""
        best, best_n = None, 0.0
        for fam, counts in self.family_count.items():
            n = counts.get(plugin_id, 0.0)
            if n > best_n:
                best, best_n = fam, n
        return best


class _Content:
    """TF-IDF vectors over name words and summary, with an inverted index per pool."""

    def __init__(self, items: Mapping[str, Item]) -> None:
        self._items = items
        self._vectors: dict[str, dict[str, float]] = {}
        self._pools: dict[str, list[str]] = collections.defaultdict(list)
        for item in items.values():
            for key in self._keys(item):
                self._pools[key].append(item.id)
        self._index: dict[str, tuple[dict[str, list[tuple[str, float]]], dict[str, float]]] = {}
        self._near: dict[str, list[tuple[str, float]]] = {}

    @staticmethod
    def _keys(item: Item) -> list[str]:
        keys = []
        if item.family:
            keys.append("f:" + item.family)
        if item.category:
            keys.append("c:" + item.category)
        return keys

    def _pool(self, key: str) -> tuple[dict[str, list[tuple[str, float]]], dict[str, float]]:
        if key in self._index:
            return self._index[key]
        members = self._pools.get(key, [])
        fam = key[2:]
        raw: dict[str, collections.Counter[str]] = {}
        df: collections.Counter[str] = collections.Counter()
        for pid in members:
            item = self._items[pid]
            words = [w for w in tokens(f"{item.name or item.id} {item.summary}")
                     if w != fam and w not in (item.family or "").split("-")]
            tf = collections.Counter(words)
            raw[pid] = tf
            df.update(tf.keys())
        n = max(len(members), 1)
        cut = max(0.2 * n, 5)
        postings: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
        vectors: dict[str, float] = {}
        for pid, tf in raw.items():
            vec = {w: (1 + math.log(c)) * math.log(1 + n / df[w])
                   for w, c in tf.items() if df[w] <= cut}
            norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
            vec = {w: v / norm for w, v in vec.items()}
            self._vectors[f"{key}|{pid}"] = vec
            vectors[pid] = norm
            for w, v in vec.items():
                postings[w].append((pid, v))
        self._index[key] = (postings, vectors)
        return self._index[key]

    def near(self, plugin_id: str, limit: int, floor: float) -> list[tuple[str, float]]:
        """Plugins most similar to ``plugin_id`` within its family (else category)."""
        if plugin_id in self._near:
            return self._near[plugin_id]
        item = self._items.get(plugin_id)
        found: list[tuple[str, float]] = []
        if item is not None:
            keys = self._keys(item)
            if keys:
                key = keys[0]
                postings, _ = self._pool(key)
                vec = self._vectors.get(f"{key}|{plugin_id}", {})
                acc: dict[str, float] = collections.defaultdict(float)
                for w, v in vec.items():
                    for other, u in postings.get(w, ()):
                        if other != plugin_id:
                            acc[other] += v * u
                found = sorted(((o, s) for o, s in acc.items() if s >= floor),
                               key=lambda t: (-t[1], t[0]))[:limit]
        self._near[plugin_id] = found
        return found


class Recommender:
    """Recommends plugins for a set, from co-usage counts, the family and content."""

    def __init__(self, items: Mapping[str, Item], usage: CoUsage,
                 params: Params | None = None) -> None:
        self.items = items
        self.usage = usage
        self.params = params or Params()
        self._content = _Content(items)
        self._top_cache: dict[str, list[tuple[str, float]]] = {}
        top = max((i.popularity for i in items.values()), default=0.0)
        self._log_top = math.log1p(top) or 1.0
        self._by_family: dict[str, list[str]] = collections.defaultdict(list)
        for item in items.values():
            if item.family:
                self._by_family[item.family].append(item.id)

    def relearn(self, usage: CoUsage) -> Recommender:
        """The same plugins (and their content index, the costly part) with new co-usage."""
        other = object.__new__(Recommender)
        other.items, other.usage, other.params = self.items, usage, self.params
        other._content, other._log_top, other._by_family = (
            self._content, self._log_top, self._by_family)
        other._top_cache = {}
        return other

    def warm(self, families: Iterable[str]) -> None:
        """Build the content index and the back-off list of ``families`` ahead of requests."""
        for fam in families:
            self._family_top(fam)
            members = self._by_family.get(fam, ())
            if members:
                self._content.near(members[0], self.params.neighbours,
                                   self.params.min_similarity)

    def family(self, plugin_id: str) -> str | None:
        """A plugin's family: its own, else the one whose sets use it most."""
        item = self.items.get(plugin_id)
        if item is not None and item.family:
            return item.family
        return self.usage.family_of(plugin_id)

    def _popularity(self, plugin_id: str) -> float:
        item = self.items.get(plugin_id)
        return math.log1p(item.popularity) / self._log_top if item else 0.0

    def _prior(self, fam: str, plugin_id: str) -> float:
        p = self.params
        n_f = self.usage.family_sets.get(fam, 0.0)
        share = self.usage.family_count[fam].get(plugin_id, 0.0) / n_f if n_f else 0.0
        return p.w_family * share + p.w_popularity * self._popularity(plugin_id)

    def _family_top(self, fam: str, limit: int = 60) -> list[tuple[str, float]]:
        if fam not in self._top_cache:
            pool = set(self._by_family.get(fam, ())) | set(self.usage.family_count.get(fam, ()))
            scored = sorted(((c, self._prior(fam, c)) for c in pool), key=lambda t: (-t[1], t[0]))
            self._top_cache[fam] = scored[:limit]
        return self._top_cache[fam]

    def recommend(self, have: Iterable[str], *, limit: int = 10,
                  allowed: Callable[[str], bool] | None = None,
                  note: str | None = None) -> list[Recommendation]:
        """Up to ``limit`` plugins for someone who has ``have``, best first.

        ``allowed`` refuses candidates (yanked, quarantined, incompatible); ``note``
        is a reason every pick shares (``"compatible with your corral 1.2"``).
        """
        p = self.params
        owned = {h for h in have if h}
        usage = self.usage
        score: dict[str, float] = collections.defaultdict(float)
        because: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
        for s in sorted(owned):
            n_s = usage.count.get(s, 0.0)
            for c, damped in usage.damped.get(s, {}).items():
                if c in owned:
                    continue
                n_c = usage.count[c]
                sim = damped / ((n_s + p.shrink) ** p.alpha * (n_c + p.shrink) ** (1 - p.alpha))
                co = usage.pairs[s][c]
                if co < p.min_support:
                    score[c] += p.rare_weight * sim
                    continue
                score[c] += sim
                conf = co / n_s
                lift = co * usage.total / (n_s * n_c)
                name = self.items[s].label if s in self.items else s
                because[c].append((sim, f"used with {name} in {conf:.0%} of projects that "
                                        f"use it (lift {lift:.1f})"))
        fams = collections.Counter(f for f in (self.family(s) for s in owned) if f)
        for fam, n in fams.most_common(2):
            weight = n / max(len(owned), 1)
            n_f = usage.family_sets.get(fam, 0.0)
            for c, prior in self._family_top(fam):
                if c in owned or prior <= 0:
                    continue
                score[c] += weight * prior
                share = usage.family_count[fam].get(c, 0.0) / n_f if n_f else 0.0
                if n_f and usage.family_count[fam].get(c, 0.0) >= p.min_support:
                    because[c].append((weight * prior * 0.5,
                                       f"used by {share:.0%} of {fam} projects"))
                elif self._popularity(c) > 0:
                    because[c].append((weight * prior * 0.5, f"one of the most downloaded "
                                                             f"{fam} plugins"))
        for s in sorted(owned):
            mine = self.items.get(s)
            for c, sim in self._content.near(s, p.neighbours, p.min_similarity):
                if c in owned:
                    continue
                score[c] += p.w_content * sim
                other = self.items[c]
                same = mine is not None and mine.category and mine.category == other.category
                text = ("same category and similar description to " if same
                        else "similar description to ") + (mine.label if mine else s)
                because[c].append((p.w_content * sim * 0.9, text))
        ranked = sorted(score.items(), key=lambda t: (-t[1], t[0]))
        out: list[Recommendation] = []
        for c, value in ranked:
            if len(out) >= limit:
                break
            if allowed is not None and not allowed(c):
                continue
            reasons = _best_reasons(because[c])
            if not reasons:
                continue
            if note:
                reasons.append(note)
            out.append(Recommendation(c, value, tuple(reasons)))
        return out


def _best_reasons(found: list[tuple[float, str]], most: int = 3) -> list[str]:
    """The strongest distinct reasons, strongest first; one content reason at most."""
    out: list[str] = []
    similar = False
    for _, text in sorted(found, key=lambda t: -t[0]):
        if text in out:
            continue
        if "description" in text:
            if similar:
                continue
            similar = True
        out.append(text)
        if len(out) >= most:
            break
    return out
