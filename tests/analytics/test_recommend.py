"""The recommendation algorithm: support threshold, exclusions, reasons with real figures."""

from __future__ import annotations

from corral._analytics.recommend import CoUsage, Item, Params, Recommender, UsageSet


def _sets(*groups: tuple[int, str]) -> list[UsageSet]:
    """``(times, "a b c")`` -> that set ``times`` times (family ``fam``)."""
    out = []
    for times, ids in groups:
        out += [UsageSet(frozenset(ids.split()), "fam")] * times
    return out


ITEMS = {i: Item(i, name=i, family="fam", category="testing", summary=f"{i} plugin")
         for i in ("a", "b", "c", "d", "e", "rare")}


def test_reasons_carry_the_real_confidence_and_lift() -> None:
    # a in 4 sets, c with a in 3 of them; c in 5 sets; 8 sets in all
    usage = CoUsage(_sets((3, "a c"), (1, "a d"), (2, "c e"), (2, "d e")))
    got = {r.id: r for r in Recommender(ITEMS, usage).recommend(["a"])}
    conf, lift = 3 / 4, 3 * 8 / (4 * 5)
    assert f"used with a in {conf:.0%} of projects that use it (lift {lift:.1f})" in (
        got["c"].reasons)
    assert got["c"].reasons[0] == "used with a in 75% of projects that use it (lift 1.2)"
    assert got["c"].score > got.get("e", got["c"]).score or "e" not in got


def test_a_pair_under_the_minimum_support_is_never_shown() -> None:
    usage = CoUsage(_sets((1, "a rare"), (3, "a c")))
    items = {k: Item(k, name=k) for k in ("a", "rare", "c")}  # no family, no content
    got = {r.id: r for r in Recommender(items, usage, Params(min_support=2)).recommend(["a"])}
    assert "c" in got
    assert "rare" not in got  # its only evidence is a pair seen once
    assert not any("rare" in reason for r in got.values() for reason in r.reasons)
    # positive control: with a support of 1 the pair is shown
    low = {r.id: r for r in Recommender(items, usage, Params(min_support=1)).recommend(["a"])}
    assert "used with a in 25% of projects that use it" in low["rare"].reasons[0]


def test_never_recommends_what_the_user_has_or_what_is_refused() -> None:
    usage = CoUsage(_sets((3, "a b c d")))
    rec = Recommender(ITEMS, usage)
    ids = [r.id for r in rec.recommend(["a", "b"])]
    assert "a" not in ids
    assert "b" not in ids
    assert {"c", "d"} <= set(ids)  # positive control
    refused = [r.id for r in rec.recommend(["a", "b"], allowed=lambda i: i != "c")]
    assert "c" not in refused
    assert "d" in refused


def test_compatibility_note_is_added_to_every_pick() -> None:
    rec = Recommender(ITEMS, CoUsage(_sets((3, "a c"))))
    got = rec.recommend(["a"], note="compatible with your corral 1.0")
    assert got
    assert all(r.reasons[-1] == "compatible with your corral 1.0" for r in got)


def test_a_new_plugin_is_found_by_content_similarity() -> None:
    items = {
        "flask-login": Item("flask-login", name="flask-login", family="flask", category="web",
                            summary="User session management for Flask login logout"),
        "flask-session-login": Item("flask-session-login", name="flask-session-login",
                                    family="flask", category="web",
                                    summary="Session management and login for Flask users"),
        "flask-charts": Item("flask-charts", name="flask-charts", family="flask",
                             category="web", summary="Draw charts in templates"),
    }
    got = {r.id: r for r in Recommender(items, CoUsage()).recommend(["flask-login"])}
    assert "flask-session-login" in got
    assert "same category and similar description to flask-login" in (
        got["flask-session-login"].reasons)
    assert "flask-charts" not in got  # nothing in common: no reason, not shown


def test_family_back_off_names_the_share_of_projects() -> None:
    usage = CoUsage(_sets((3, "b c"), (1, "d e")))
    got = {r.id: r for r in Recommender(ITEMS, usage).recommend(["a"])}  # a: never seen
    assert "used by 75% of fam projects" in got["b"].reasons
    assert "d" not in got  # used by one project only: under the support, no reason to show


def test_reports_weigh_less_than_seeded_sets() -> None:
    items = {k: Item(k, name=k) for k in ("a", "b")}
    light = CoUsage([UsageSet(frozenset({"a", "b"}), None, 0.5)] * 3)  # 1.5 < support 2
    assert Recommender(items, light).recommend(["a"]) == []
    enough = CoUsage([UsageSet(frozenset({"a", "b"}), None, 0.5)] * 4)
    got = Recommender(items, enough).recommend(["a"])
    assert [r.id for r in got] == ["b"]
    assert got[0].reasons[0].startswith("used with a in 100% of projects")
