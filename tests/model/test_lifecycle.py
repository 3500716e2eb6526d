"""The lifecycle state machine, without a host: legal moves and their refusals."""

from __future__ import annotations

import pytest

from corral import LifecycleError, State, UsageError
from corral._model.lifecycle import DURABLE_STATES, check_transition

S = State

LEGAL = [
    (S.DISCOVERED, "register", S.REGISTERED),
    (S.REGISTERED, "load", S.LOADED),
    (S.UNLOADED, "load", S.LOADED),
    (S.DISABLED, "load", S.LOADED),
    (S.FAILED, "load", S.LOADED),
    (S.LOADED, "enable", S.ENABLED),
    (S.DISABLED, "enable", S.ENABLED),
    (S.ENABLED, "disable", S.DISABLED),
    (S.LOADED, "unload", S.UNLOADED),
    (S.DISABLED, "unload", S.UNLOADED),
    (S.FAILED, "unload", S.UNLOADED),
    (S.REGISTERED, "unregister", S.DISCOVERED),
    (S.LOADED, "unregister", S.DISCOVERED),
    (S.DISABLED, "unregister", S.DISCOVERED),
    (S.UNLOADED, "unregister", S.DISCOVERED),
    (S.FAILED, "unregister", S.DISCOVERED),
]

ILLEGAL = [
    (S.REGISTERED, "register", "it is already registered"),
    (S.ENABLED, "register", "already registered and enabled"),
    (S.DISABLED, "disable", "it is already disabled"),
    (S.REGISTERED, "disable", "it is not enabled"),
    (S.LOADED, "disable", "loaded but not enabled"),
    (S.FAILED, "disable", "it has failed"),
    (S.ENABLED, "unload", "disable it first"),
    (S.REGISTERED, "unload", "never loaded"),
    (S.UNLOADED, "unload", "already unloaded"),
    (S.ENABLED, "unregister", "disable it first"),
    (S.ENABLED, "enable", "already enabled"),
    (S.DISCOVERED, "enable", "it is not registered"),
    (S.DISCOVERED, "load", "it is not registered"),
    (S.DISCOVERED, "unregister", "it is not registered"),
    (S.REGISTERED, "enable", "it is registered"),
    (S.ENABLED, "load", "it is enabled"),
]

ACTIONS = ("register", "load", "enable", "disable", "unload", "unregister")


@pytest.mark.parametrize(("start", "action", "end"), LEGAL)
def test_legal_transitions(start: State, action: str, end: State) -> None:
    assert check_transition("acme.demo", start, action) is end


@pytest.mark.parametrize(("start", "action", "why"), ILLEGAL)
def test_illegal_transitions_say_why(start: State, action: str, why: str) -> None:
    with pytest.raises(LifecycleError) as info:
        check_transition("acme.demo", start, action)
    err = info.value
    assert str(err).startswith(f"cannot {action} acme.demo: ")
    assert why in str(err)
    assert err.plugin_id == "acme.demo"
    assert err.code == "usage"
    assert err.exit_code == 2
    assert isinstance(err, UsageError)
    assert err.to_dict()["state"] == start.value


def test_every_pair_is_either_legal_or_a_lifecycle_error() -> None:
    legal = {(s, a): e for s, a, e in LEGAL}
    for state in State:
        for action in ACTIONS:
            if (state, action) in legal:
                assert check_transition("a.b", state, action) is legal[(state, action)]
            else:
                with pytest.raises(LifecycleError, match=rf"^cannot {action} a\.b: "):
                    check_transition("a.b", state, action)


def test_failed_recovers_only_through_load() -> None:
    assert check_transition("a.b", S.FAILED, "load") is S.LOADED
    with pytest.raises(LifecycleError):
        check_transition("a.b", S.FAILED, "enable")


def test_durable_states() -> None:
    assert {S.REGISTERED, S.ENABLED, S.DISABLED, S.FAILED} == DURABLE_STATES
    assert S.LOADED not in DURABLE_STATES
    assert {s.value for s in State} == {
        "discovered", "registered", "loaded", "enabled", "disabled", "unloaded", "failed"
    }
