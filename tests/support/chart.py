"""Helpers for the Helm chart tests: the pinned helm binary, rendering, and schema checks for our custom resources.

kubernetes-validate knows the built-in kinds only; custom resources are checked here against their own schemas:
VoiceChat against the openAPIV3Schema of our CRD (with jsonschema), PodMonitor/ServiceMonitor against the
prometheus-operator models of cloudcoil-models-prometheus-operator (pydantic, generated from that CRD).
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from scripts.render_manifests import find_helm

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "voicechat"
CI_VALUES_DIR = CHART_DIR / "ci"
MANIFESTS_DIR = REPO_ROOT / "manifests"
RENDER_SCRIPT = REPO_ROOT / "scripts" / "render_manifests.py"
CRD_FILE_NAME = "voicechats.voicechat.io.yaml"
OPERATOR_CRD = REPO_ROOT / "operator" / "voicechat_operator" / "crds" / CRD_FILE_NAME
CHART_CRD = CHART_DIR / "crds" / CRD_FILE_NAME
# Kubernetes minor versions the chart supports (Chart.yaml kubeVersion >=1.29), each checked by the tests.
KUBE_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")
RELEASE = "vc"
NAMESPACE = "voicechat-system"

Obj = dict[str, Any]


def helm_binary() -> str:
    """The helm v3 that scripts/install-system.sh extracts (the Makefile also puts it on PATH)."""
    found = find_helm()
    if found is None:
        pytest.fail(
            "helm not found: run `make system` (scripts/install-system.sh) to extract the pinned helm v3"
        )
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([helm_binary(), *args], capture_output=True, text=True, check=False, timeout=120)
    if check and done.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}\n{done.stdout}")
    return done


def template_args(values_files: Sequence[Path] = (), kube_version: str | None = None) -> list[str]:
    args = ["template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE]
    for values in values_files:
        args += ["-f", str(values)]
    if kube_version:
        args += ["--kube-version", kube_version]
    return args


def render(
    values_files: Sequence[Path] = (), kube_version: str | None = None, extra: Sequence[str] = ()
) -> list[Obj]:
    """The objects `helm template` renders (test hooks included, CRDs from crds/ not included)."""
    out = helm(*template_args(values_files, kube_version), *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objs: Iterable[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o.get("kind") == kind]


# --- our CRD ---------------------------------------------------------------------------------------------------


def load_crd(path: Path = OPERATOR_CRD) -> Obj:
    crd: Obj = yaml.safe_load(path.read_text())
    return crd


def _strict(node: Any) -> Any:
    """A CRD structural schema as plain JSON Schema that rejects unknown fields.

    The API server prunes unknown fields silently unless the client asks for strict field validation
    (kubectl's default since 1.27 is to warn); rejecting them here catches a misspelt field in our values.
    """
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-embedded-resource")
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not preserve
    ):
        out["additionalProperties"] = False
    return out


@cache
def _crd_validator(path: Path, version: str) -> jsonschema.protocols.Validator:
    crd = load_crd(path)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _strict(served["schema"]["openAPIV3Schema"])
    # The API server always accepts these at the root, whether or not the schema lists them.
    schema.setdefault("properties", {})
    for field, kind in (("apiVersion", "string"), ("kind", "string"), ("metadata", "object")):
        schema["properties"].setdefault(field, {"type": kind})
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return validator


@cache
def operator_crds() -> dict[tuple[str, str], Path]:
    """The operator's CRD files by (group, kind): VoiceChat and kopf's peering kinds."""
    found = {}
    for path in sorted(OPERATOR_CRD.parent.glob("*.yaml")):
        crd = load_crd(path)
        found[(crd["spec"]["group"], crd["spec"]["names"]["kind"])] = path
    return found


def crd_errors(obj: Mapping[str, Any], crd_path: Path | None = None) -> list[str]:
    """Why `obj` would be rejected as an instance of one of the operator's CRDs (empty when it is valid)."""
    api_version = str(obj.get("apiVersion", ""))
    group, _, version = api_version.rpartition("/")
    if crd_path is None:
        found = operator_crds().get((group, str(obj.get("kind"))))
        if found is None:
            return [f"no CRD of the operator defines {api_version} {obj.get('kind')}"]
        crd_path = found
    crd = load_crd(crd_path)
    if obj.get("kind") != crd["spec"]["names"]["kind"] or group != crd["spec"]["group"]:
        return [
            f"not a {crd['spec']['names']['kind']} of {crd['spec']['group']}: {api_version} {obj.get('kind')}"
        ]
    if version not in {v["name"] for v in crd["spec"]["versions"] if v["served"]}:
        return [f"version {version} is not served by the CRD"]
    errors = []
    meta = obj.get("metadata", {})
    name = meta.get("name", "")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        errors.append(f"metadata.name {name!r}: must be a DNS label")
    namespaced = crd["spec"]["scope"] == "Namespaced"
    if namespaced != ("namespace" in meta):
        errors.append(
            f"metadata.namespace: {'required' if namespaced else 'not allowed'} for this {crd['spec']['scope']} kind"
        )
    validator = _crd_validator(crd_path, version)
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "<root>"
        errors.append(f"{where}: {err.message}")
    return errors


# --- prometheus-operator kinds ---------------------------------------------------------------------------------


def _dropped_keys(original: Any, dumped: Any, path: str) -> list[str]:
    """Keys of `original` missing from the model's dump: fields the model does not know."""
    if isinstance(original, dict) and isinstance(dumped, dict):
        out = []
        for key, value in original.items():
            if key not in dumped:
                out.append(f"{path}.{key}: unknown field")
            else:
                out += _dropped_keys(value, dumped[key], f"{path}.{key}")
        return out
    if isinstance(original, list) and isinstance(dumped, list):
        return [
            e
            for i, (a, b) in enumerate(zip(original, dumped, strict=False))
            for e in _dropped_keys(a, b, f"{path}[{i}]")
        ]
    return []


def monitoring_errors(obj: Obj) -> list[str]:
    """Why a PodMonitor/ServiceMonitor would be rejected by the prometheus-operator CRD schema (strictly)."""
    from cloudcoil.models.prometheus_operator import v1 as promv1
    from pydantic import ValidationError

    models = {"PodMonitor": promv1.PodMonitor, "ServiceMonitor": promv1.ServiceMonitor}
    if obj.get("apiVersion") != "monitoring.coreos.com/v1" or obj.get("kind") not in models:
        return [f"unexpected monitoring object {obj.get('apiVersion')} {obj.get('kind')}"]
    try:
        model = models[obj["kind"]].model_validate(copy.deepcopy(obj))
    except ValidationError as exc:
        return [str(exc)]
    dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return _dropped_keys(obj, dumped, obj["kind"])


# --- every rendered object -------------------------------------------------------------------------------------

MONITORING_GROUP = "monitoring.coreos.com/"


def object_errors(obj: Obj, kube_version: str) -> list[str]:
    """Schema errors of one rendered object for one Kubernetes version (built-in kinds strictly)."""
    api_version = str(obj.get("apiVersion", ""))
    if (api_version.rpartition("/")[0], obj.get("kind")) in operator_crds():
        return crd_errors(obj)
    if api_version.startswith(MONITORING_GROUP):
        return monitoring_errors(obj)
    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [f"{obj['kind']}/{obj['metadata']['name']} {where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []


def load_values(path: Path) -> Obj:
    values: Obj = yaml.safe_load(path.read_text()) or {}
    return values


def dump_values(path: Path, values: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(values), sort_keys=False))
    return path
