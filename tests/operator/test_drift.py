"""Pure checks of the port-list repair and the log filters (the cluster tests prove them end to end)."""

from __future__ import annotations

import logging

from tests.support.kube_schema import minimal_voicechat
from voicechat_operator.logs import DowngradeRetriedThrottling, DropKopfInternals
from voicechat_operator.reconcile import port_list_repairs
from voicechat_operator.render import Owner, render_llm_deployment, render_session_service
from voicechat_operator.spec import parse_spec

OWNER = Owner(name="demo", namespace="voice", uid="u-1")
SPEC = parse_spec("demo", minimal_voicechat("voice")["spec"])


def _live(obj: dict) -> dict:  # type: ignore[type-arg]
    live = {**obj, "metadata": {**obj["metadata"], "resourceVersion": "42"}}
    return live


def test_a_changed_service_port_is_replaced_with_a_guarded_patch() -> None:
    desired = render_session_service(OWNER, SPEC)
    live = _live(desired)
    live["spec"] = {**desired["spec"], "ports": [{**desired["spec"]["ports"][0], "port": 8081}]}
    assert port_list_repairs(desired, live) == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
        {"op": "replace", "path": "/spec/ports", "value": desired["spec"]["ports"]},
    ]


def test_a_changed_container_port_is_replaced_in_the_right_container() -> None:
    desired = render_llm_deployment(OWNER, SPEC)
    live = _live(desired)
    container = desired["spec"]["template"]["spec"]["containers"][0]
    sidecar = {"name": "sidecar", "image": "x", "ports": [{"containerPort": 9, "protocol": "TCP"}]}
    changed = {
        **container,
        "ports": [{**container["ports"][0], "containerPort": 8081}, container["ports"][1]],
    }
    live["spec"] = {**desired["spec"], "template": {"spec": {"containers": [sidecar, changed]}}}
    ops = port_list_repairs(desired, live)
    assert ops[1:] == [
        {"op": "replace", "path": "/spec/template/spec/containers/1/ports", "value": container["ports"]}
    ]


def test_same_keys_need_no_repair_even_with_server_defaults() -> None:
    desired = render_session_service(OWNER, SPEC)
    live = _live(desired)
    live["spec"] = {**desired["spec"], "ports": [{**desired["spec"]["ports"][0], "nodePort": 30001}]}
    assert port_list_repairs(desired, live) == []


def _record(level: int, msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("kopf._cogs.clients.api", level, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


def test_retried_throttling_is_a_warning_and_a_final_failure_stays_an_error() -> None:
    flt = DowngradeRetriedThrottling()
    retried = _record(
        logging.ERROR, "Request attempt #1/9 failed; will retry: GET /x -> APITooManyRequestsError(429)"
    )
    assert flt.filter(retried)
    assert retried.levelname == "WARNING"
    final = _record(
        logging.ERROR, "Request attempt #9/9 failed; escalating: GET /x -> APITooManyRequestsError(429)"
    )
    assert flt.filter(final)
    assert final.levelname == "ERROR"


def test_kopf_settings_are_not_logged() -> None:
    record = _record(
        logging.INFO, "Handler succeeded", settings=object(), k8s_skip=False, k8s_ref={"name": "x"}
    )
    assert DropKopfInternals().filter(record)
    assert "settings" not in vars(record)
    assert "k8s_skip" not in vars(record)
    assert vars(record)["k8s_ref"]
