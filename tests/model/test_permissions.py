"""Grant matching as an attacker probes it: topic patterns, secrets, placeholders, net-connect."""

from __future__ import annotations

import pytest

from corral._errors import PermissionDenied
from corral._model.permissions import (
    Permissions,
    expand_placeholders,
    pattern_matches,
    valid_pattern,
)


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("git.commit", "git.commit", True),
        ("git.commit", "git.commits", False),
        ("git.commit", "git", False),
        ("git.*", "git.commit", True),
        ("git.*", "git", False),  # one level, not zero
        ("git.*", "git.commit.sha", False),  # one level, not two
        ("git.*", "gitx.commit", False),
        ("*.commit", "any.commit", True),
        ("*.commit", "any.push", False),
        ("git.>", "git.commit", True),
        ("git.>", "git.commit.sha.x", True),
        ("git.>", "git", False),  # at least one level below
        ("git.>", "other.commit", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.d", False),
        ("a.*.c", "a.b", False),
        ("a.b", "a.b.c", False),
        (">", "anything.at.all", True),
        ("*", "one", True),
        ("*", "one.two", False),
    ],
)
def test_pattern_matches(pattern: str, name: str, expected: bool) -> None:
    assert pattern_matches(pattern, name) is expected


def test_valid_pattern() -> None:
    assert valid_pattern("git.*")
    assert valid_pattern("git.>")
    assert not valid_pattern("git.>.x")  # '>' only at the end
    assert not valid_pattern("")


def test_secrets_are_granted_by_exact_name_only() -> None:
    perms = Permissions(host_api=("secrets:github-token", "state.read:git.*"))
    assert perms.allows_api("secrets", "github-token")
    assert not perms.allows_api("secrets", "github-token2")
    assert not perms.allows_api("secrets", "github")
    # a pattern-looking secret grant is a name, not a wildcard
    star = Permissions(host_api=("secrets:*",))
    assert not star.allows_api("secrets", "github-token")
    assert star.allows_api("secrets", "*")
    assert perms.allows_api("state.read", "git.head")
    assert not perms.allows_api("state.write", "git.head")  # another service
    assert not perms.allows_api("state.read", "gitx.head")


def test_check_api_names_the_missing_grant() -> None:
    perms = Permissions(host_api=("events.publish:git.*",))
    perms.check_api("events.publish", "git.push", plugin_id="acme.git")  # granted: no error
    with pytest.raises(PermissionDenied) as info:
        perms.check_api("events.publish", "ci.push", plugin_id="acme.git")
    assert info.value.message == "plugin acme.git has no host-api grant events.publish:ci.push"
    assert info.value.details["permission"] == "host-api:events.publish:ci.push"


def test_expand_placeholders_only_a_leading_one() -> None:
    values = {"data": "/home/u/data/acme", "workspace": "/srv/space"}
    assert expand_placeholders("{data}", values) == "/home/u/data/acme"
    assert expand_placeholders("{data}/cache", values) == "/home/u/data/acme/cache"
    assert expand_placeholders("/etc/{data}", values) == "/etc/{data}"  # not leading: literal
    assert expand_placeholders("/plain/path", values) == "/plain/path"
    with pytest.raises(KeyError):
        expand_placeholders("{nope}/x", values)


def test_net_connect_is_exact_host_and_port() -> None:
    perms = Permissions(net_connect=("api.example.com:443", "[::1]:8080"))
    assert perms.allows_connect("api.example.com", 443)
    assert perms.allows_connect("API.example.com", 443)  # host names are case-insensitive
    assert not perms.allows_connect("api.example.com", 80)
    assert not perms.allows_connect("evil.api.example.com", 443)
    assert not perms.allows_connect("api.example.com.evil", 443)
    assert perms.allows_connect("::1", 8080)
    assert not perms.allows_connect("::1", 8081)


def test_to_dict_uses_manifest_spelling_and_leaves_out_empty_grants() -> None:
    perms = Permissions(fs_read=("{workspace}",), host_api=("secrets:t",))
    assert perms.to_dict() == {"fs-read": ["{workspace}"], "host-api": ["secrets:t"]}
    assert Permissions().to_dict() == {}
