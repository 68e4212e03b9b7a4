"""Pure status computation: the child Deployments' status in, the VoiceChat's status out."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from voicechat_operator.probe import CheckResult

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


def external_llm_condition(check: CheckResult | None, generation: int | None) -> Obj:
    """LLMReady of an external engine: what the operator's last ``GET {url}/models`` found."""
    if check is None:
        return condition(
            LLM_READY, False, "NotChecked", "the operator has not checked the endpoint yet", generation
        )
    return condition(LLM_READY, check.ok, check.reason, check.message, generation)


def bedrock_llm_condition(session_deployment: Mapping[str, Any] | None, generation: int | None) -> Obj:
    """LLMReady of bedrock: the session pods' readiness, which includes a one-token Bedrock call they make.

    The operator cannot check Bedrock itself: the calls are signed with the session pods' identity (IRSA /
    EKS Pod Identity on NAME-session), which the operator does not have.
    """
    ready, desired = _replicas(session_deployment)
    how = "the check is the session pods' own (a one-token Bedrock ConverseStream call with their identity)"
    if ready == 0:
        return condition(
            LLM_READY, False, "NoReadySessionPods", f"0/{desired} session pods passed it; {how}", generation
        )
    return condition(
        LLM_READY,
        True,
        "SessionPodsReachBedrock",
        f"{ready}/{desired} session pods passed it; {how}",
        generation,
    )


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
    engine: str | None = None,
    llm_check: CheckResult | None = None,
) -> Obj:
    """The whole status subresource for one observation.

    ``engine`` is the spec's llm.engine (None when the spec is invalid: the LLM Deployment is what is known);
    ``llm_check`` the operator's last check of an external engine.
    """
    if engine == "external":
        llm = external_llm_condition(llm_check, generation)
    elif engine == "bedrock":
        llm = bedrock_llm_condition(session_deployment, generation)
    else:
        llm = llm_condition(llm_deployment, generation)
    sessions = sessions_condition(session_deployment, generation)
    ready = ready_condition(llm, sessions, problem, generation)
    llm_ready, llm_desired = _replicas(llm_deployment)
    sessions_ready, sessions_desired = _replicas(session_deployment)
    llm_status: Obj = {"readyReplicas": llm_ready, "desiredReplicas": llm_desired}
    if engine == "external" and llm_check is not None:
        if llm_check.latency_ms is not None:
            llm_status["checkLatencyMs"] = llm_check.latency_ms
        if llm_check.checked_at is not None:
            llm_status["lastCheckTime"] = llm_check.checked_at
    status: Obj = {
        "conditions": carry_transition_times([llm, sessions, ready], (previous or {}).get("conditions")),
        "llm": llm_status,
        "sessions": {"readyReplicas": sessions_ready, "desiredReplicas": sessions_desired},
    }
    if generation is not None:
        status["observedGeneration"] = generation
    if endpoints is not None:
        status["endpoints"] = dict(endpoints)
    return _clear_dropped_fields(status, previous)


def _clear_dropped_fields(status: Obj, previous: Mapping[str, Any] | None) -> Obj:
    """Null the stored sub-fields ``status`` no longer has (endpoints.warmup after a switch to a hosted LLM).

    The status is written as a JSON merge patch, which keeps every field it does not mention; null removes one.
    """
    for key in ("llm", "endpoints"):
        old, new = (previous or {}).get(key), status.get(key)
        if isinstance(old, Mapping) and isinstance(new, dict):
            new.update({field: None for field in old if field not in new})
    return status


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def status_changed(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether writing ``new`` would change anything the operator owns in the stored status."""
    old = old or {}
    return any(_without_nulls(old.get(key)) != _without_nulls(value) for key, value in new.items())
