"""Pure status computation: the child Deployments' status in, the VoiceChat's status out."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

LLM_READY = "LLMReady"
SESSIONS_READY = "SessionsReady"
READY = "Ready"
CONDITION_TYPES = (LLM_READY, SESSIONS_READY, READY)

Obj = dict[str, Any]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _replicas(deployment: Mapping[str, Any] | None) -> tuple[int, int]:
    """(ready, desired) of a Deployment; desired is what its spec (or the HPA through it) asks for."""
    if deployment is None:
        return 0, 0
    ready = int(deployment.get("status", {}).get("readyReplicas") or 0)
    desired = deployment.get("spec", {}).get("replicas")
    return ready, int(desired if desired is not None else 1)


def condition(type_: str, ok: bool, reason: str, message: str, generation: int | None) -> Obj:
    result: Obj = {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message}
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def llm_condition(deployment: Mapping[str, Any] | None, generation: int | None) -> Obj:
    ready, desired = _replicas(deployment)
    if deployment is None:
        return condition(LLM_READY, False, "NotFound", "the LLM Deployment does not exist yet", generation)
    if desired == 0:
        return condition(LLM_READY, False, "ScaledToZero", "llm.replicas is 0", generation)
    if ready == 0:
        return condition(
            LLM_READY,
            False,
            "WarmingUp",
            f"0/{desired} LLM pods warm (loading the model or warming up)",
            generation,
        )
    reason = "AllReplicasWarm" if ready >= desired else "SomeReplicasWarm"
    return condition(LLM_READY, True, reason, f"{ready}/{desired} LLM pods warm", generation)


def sessions_condition(deployment: Mapping[str, Any] | None, generation: int | None) -> Obj:
    ready, desired = _replicas(deployment)
    if deployment is None:
        return condition(
            SESSIONS_READY, False, "NotFound", "the session Deployment does not exist yet", generation
        )
    if ready == 0:
        return condition(
            SESSIONS_READY, False, "NoReadyReplicas", f"0/{desired} session pods ready", generation
        )
    reason = "AllReplicasReady" if ready >= desired else "SomeReplicasReady"
    return condition(SESSIONS_READY, True, reason, f"{ready}/{desired} session pods ready", generation)


def ready_condition(llm: Obj, sessions: Obj, problem: tuple[str, str] | None, generation: int | None) -> Obj:
    """Ready = spec applied, LLM warm and sessions servable. ``problem`` is (reason, message) of a failure."""
    if problem is not None:
        return condition(READY, False, problem[0], problem[1], generation)
    if llm["status"] != "True":
        return condition(READY, False, "LLMNotReady", llm["message"], generation)
    if sessions["status"] != "True":
        return condition(READY, False, "SessionsNotReady", sessions["message"], generation)
    return condition(
        READY, True, "Ready", f"LLM: {llm['message']}; sessions: {sessions['message']}", generation
    )


def carry_transition_times(
    new: Sequence[Obj], old: Sequence[Mapping[str, Any]] | None, now: str | None = None
) -> list[Obj]:
    """Keep each condition's lastTransitionTime unless its status changed (what clients key alerts on)."""
    previous = {c.get("type"): c for c in old or ()}
    stamp = now or _now()
    result = []
    for cond in new:
        before = previous.get(cond["type"])
        same = (
            before is not None and before.get("status") == cond["status"] and before.get("lastTransitionTime")
        )
        result.append(
            {**cond, "lastTransitionTime": before["lastTransitionTime"] if same and before else stamp}
        )
    return result


def build_status(
    *,
    generation: int | None,
    llm_deployment: Mapping[str, Any] | None,
    session_deployment: Mapping[str, Any] | None,
    endpoints: Mapping[str, str] | None,
    problem: tuple[str, str] | None,
    previous: Mapping[str, Any] | None,
) -> Obj:
    """The whole status subresource for one observation."""
    llm = llm_condition(llm_deployment, generation)
    sessions = sessions_condition(session_deployment, generation)
    ready = ready_condition(llm, sessions, problem, generation)
    llm_ready, llm_desired = _replicas(llm_deployment)
    sessions_ready, sessions_desired = _replicas(session_deployment)
    status: Obj = {
        "conditions": carry_transition_times([llm, sessions, ready], (previous or {}).get("conditions")),
        "llm": {"readyReplicas": llm_ready, "desiredReplicas": llm_desired},
        "sessions": {"readyReplicas": sessions_ready, "desiredReplicas": sessions_desired},
    }
    if generation is not None:
        status["observedGeneration"] = generation
    if endpoints is not None:
        status["endpoints"] = dict(endpoints)
    return status


def status_changed(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether writing ``new`` would change anything the operator owns in the stored status."""
    old = old or {}
    return any(old.get(key) != value for key, value in new.items())
