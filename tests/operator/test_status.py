"""Status computation: conditions follow the child Deployments; transition times move only on change."""

from __future__ import annotations

from typing import Any

from voicechat_operator.status import build_status, carry_transition_times, status_changed


def _deployment(ready: int, replicas: int | None) -> dict[str, Any]:
    spec = {} if replicas is None else {"replicas": replicas}
    return {"spec": spec, "status": {"readyReplicas": ready}}


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def _status(llm: dict[str, Any] | None, sessions: dict[str, Any] | None, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"generation": 3, "endpoints": None, "problem": None, "previous": None, **kw}
    return build_status(llm_deployment=llm, session_deployment=sessions, **args)


def test_nothing_yet() -> None:
    assert _conditions(_status(None, None)) == {
        "LLMReady": ("False", "NotFound"),
        "SessionsReady": ("False", "NotFound"),
        "Ready": ("False", "LLMNotReady"),
    }


def test_llm_warming_up_then_warm() -> None:
    assert _conditions(_status(_deployment(0, 1), _deployment(2, 2)))["LLMReady"] == ("False", "WarmingUp")
    warm = _status(_deployment(1, 1), _deployment(1, 2))
    assert _conditions(warm) == {
        "LLMReady": ("True", "AllReplicasWarm"),
        "SessionsReady": ("True", "SomeReplicasReady"),
        "Ready": ("True", "Ready"),
    }
    assert warm["sessions"] == {"readyReplicas": 1, "desiredReplicas": 2}
    assert warm["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 for c in warm["conditions"])


def test_scaled_to_zero_and_no_sessions() -> None:
    conditions = _conditions(_status(_deployment(0, 0), _deployment(0, None)))
    assert conditions["LLMReady"] == ("False", "ScaledToZero")
    assert conditions["SessionsReady"] == ("False", "NoReadyReplicas")


def test_a_problem_overrides_ready() -> None:
    status = _status(
        _deployment(1, 1), _deployment(1, 1), problem=("InvalidSpec", "maxReplicas < minReplicas")
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "InvalidSpec",
        "maxReplicas < minReplicas",
    )


def test_transition_times_move_only_when_the_status_changes() -> None:
    old = [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    same = carry_transition_times([{"type": "Ready", "status": "False", "reason": "X"}], old, now="later")
    flipped = carry_transition_times(
        [{"type": "Ready", "status": "True", "reason": "Ready"}], old, now="later"
    )
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert flipped[0]["lastTransitionTime"] == "later"


def test_unchanged_status_is_not_rewritten() -> None:
    first = _status(_deployment(1, 1), _deployment(2, 2))
    second = _status(_deployment(1, 1), _deployment(2, 2), previous=first)
    assert not status_changed(second, first)
    third = _status(_deployment(1, 1), _deployment(3, 3), previous=first)
    assert status_changed(third, first)
