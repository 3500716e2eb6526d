"""Relevance: the I/O-free scoring that orders search candidates.

The database finds candidates (exact and prefix name matches, look-alike
names, and BM25 text matches over name words, tags and summary); this module
gives each one a score from features a user would recognise, strongest first:

1. the query *is* the plugin's name or id (normalised);
2. the query is the name misspelled (edit-distance similarity over 0.85);
3. the query words are the words of the name (``pytest xdist``), or the
   name starts with the query;
4. how many query words (or their synonyms) the name, tags and summary hold,
   and the text engine's own BM25 score;
5. popularity (downloads, log scale) and rating, which decide between
   otherwise similar matches and lift the well-used plugin over an abandoned
   namesake.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

from rapidfuzz import fuzz

from ._names import words

__all__ = ["Candidate", "rank", "stem"]

#: Score per tenfold downloads, and for matching every query word (tuned on the catalogue).
POPULARITY_WEIGHT = 2.5
ALL_WORDS_BONUS = 1.5
WHOLE_NAME_BONUS = 3.0
COVERAGE_WEIGHT = 6.0

_SUFFIXES: Final = ("ings", "ing", "ers", "ies", "ed", "es", "er", "s")


@functools.lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """A light stemmer so that ``tests``/``testing``/``test`` meet."""
    for suffix in _SUFFIXES:
        if len(word) - len(suffix) >= 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


@final
@dataclass(slots=True)
class Candidate:
    """One plugin found by some matcher, with what the matchers measured."""

    pk: int
    id: str
    norm_name: str
    summary: str
    tags: str
    downloads: int
    rating: float
    text_score: float = 0.0  # BM25-like, higher is better, 0 when not a text match
    score: float = 0.0


@functools.lru_cache(maxsize=100_000)
def _vocab(norm_name: str, summary: str, tags: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """Stemmed name words and the stemmed words of name, summary and tags (cached)."""
    name_words = tuple(stem(x) for x in words(norm_name))
    text = frozenset(name_words).union(
        [stem(x) for x in words(summary)], [stem(x) for x in tags.split()]
    )
    return name_words, text


def _group_hits(groups: Sequence[tuple[str, ...]], vocab: frozenset[str]) -> list[float]:
    """Per query group: 1 if its own word is present, 0.6 for a synonym, else 0."""
    hits = []
    for group in groups:
        best = 0.0
        for i, alt in enumerate(group):
            if alt in vocab:
                best = 1.0 if i == 0 else 0.6
                break
        hits.append(best)
    return hits


def rank(
    candidates: Sequence[Candidate],
    *,
    query: str,
    query_name: str,
    groups: Sequence[tuple[str, ...]],
    weights: Sequence[float] | None = None,
    ecosystems: frozenset[str] = frozenset(),
) -> list[Candidate]:
    """Score ``candidates`` in place and return them best first.

    :param query: the raw query (for id matches).
    :param query_name: the query normalised as a name (``pytest xdist`` -> ``pytest-xdist``).
    :param groups: query words with their synonyms (:func:`~._names.query_terms`).
    :param weights: one weight per group (rarer words weigh more, as in BM25's IDF).
    :param ecosystems: words naming an ecosystem (``sphinx``): results outside it sink.
    """
    max_text = max((c.text_score for c in candidates), default=0.0) or 1.0
    q_id = query.strip().lower()
    stemmed = [tuple(stem(a) for a in g) for g in groups]
    all_alts = {a for g in stemmed for a in g}
    w = list(weights) if weights is not None else [1.0] * len(groups)
    w_total = sum(w) or 1.0
    exact_found = any(c.norm_name == query_name or c.id == q_id for c in candidates)
    short = len(groups) <= 2
    compact = query_name.replace("-", "")
    for c in candidates:
        name_words, text_vocab = _vocab(c.norm_name, c.summary, c.tags)
        name_hits = _group_hits(stemmed, frozenset(name_words))
        any_hits = _group_hits(stemmed, text_vocab)
        coverage = sum(h * wi for h, wi in zip(any_hits, w, strict=True)) / w_total
        name_cov = sum(h * wi for h, wi in zip(name_hits, w, strict=True)) / w_total
        # how much of the name the query explains: "mkdocs" for "mkdocs", not "mkdocs-foo-bar"
        explained = sum(1 for x in name_words if x in all_alts) / max(len(name_words), 1)
        score = 0.0
        if c.norm_name == query_name or c.id == q_id:
            score += 100.0
        elif len(compact) >= 6 and c.norm_name.replace("-", "") == compact:
            score += 90.0  # "django rest framework" is djangorestframework
        elif len(query_name) >= 4:
            if short and not exact_found:
                similarity = fuzz.ratio(query_name, c.norm_name) / 100.0
                if similarity >= 0.8:
                    score += 20.0 * (similarity - 0.75) / 0.25
            if c.norm_name.startswith(query_name + "-"):
                score += 3.0
        score += 4.0 * name_cov + 3.0 * explained * name_cov
        if explained == 1.0 and name_cov > 0:
            score += WHOLE_NAME_BONUS  # every word of the name is asked for
        score += COVERAGE_WEIGHT * coverage + 1.5 * (c.text_score / max_text)
        if len(groups) > 1 and all(any_hits):
            score += ALL_WORDS_BONUS  # every query word is there, in some form
        for group, hit in zip(groups, any_hits, strict=True):
            if hit == 0 and group[0] in ecosystems:
                score -= 5.0  # "... for sphinx" wants a sphinx plugin
        score += POPULARITY_WEIGHT * math.log10(1 + c.downloads)
        score += 0.2 * c.rating
        c.score = round(score, 4)
    return sorted(candidates, key=lambda c: (-c.score, -c.downloads, c.id))
