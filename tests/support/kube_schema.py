"""What the API server does with a custom resource and its CRD's structural schema, for tests.

``kubernetes-validate`` validates built-in kinds but not custom resources; these helpers apply the CRD's
defaults the way the API server does (top-down, a defaulted object gets its own properties' defaults) and
validate against the ``openAPIV3Schema`` with jsonschema (``x-kubernetes-*`` extensions translated).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

import voicechat_operator

CRD_DIR = Path(voicechat_operator.__file__).parent / "crds"
VOICECHAT_CRD_PATH = CRD_DIR / "voicechats.voicechat.io.yaml"
# The smallest VoiceChat the design says must be accepted; tests copy it from here, never retype it.
MINIMAL_VOICECHAT_PATH = (
    Path(__file__).resolve().parents[2] / "operator" / "examples" / "voicechat-minimal.yaml"
)


def minimal_voicechat(namespace: str = "default") -> dict[str, Any]:
    """A fresh copy of the design's minimal VoiceChat, in ``namespace``."""
    cr: dict[str, Any] = yaml.safe_load(MINIMAL_VOICECHAT_PATH.read_text())
    cr["metadata"]["namespace"] = namespace
    return cr


def load_crd(path: Path = VOICECHAT_CRD_PATH) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(path.read_text())
    return crd


def storage_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def to_jsonschema(schema: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """Translate a structural schema into JSON Schema; ``strict`` rejects unknown fields (typos) instead of
    pruning them silently as the API server would."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: to_jsonschema(sub, strict=strict) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_jsonschema(value, strict=strict)
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [to_jsonschema(sub, strict=strict) for sub in value]
        else:
            out[key] = copy.deepcopy(value)
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    if strict and "properties" in schema and not preserve and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """A copy of ``obj`` with the schema's defaults filled in, as the API server stores it."""
    obj = copy.deepcopy(obj)
    _default_into(schema, obj)
    return obj


def _default_into(schema: dict[str, Any], obj: Any) -> None:
    if isinstance(obj, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                _default_into(sub, obj[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, value in obj.items():
                if name not in (schema.get("properties") or {}):
                    _default_into(extra, value)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            _default_into(schema["items"], item)


def validate_custom_resource(crd: dict[str, Any], obj: dict[str, Any], *, strict: bool = True) -> None:
    """Raise jsonschema.ValidationError if the (defaulted) object does not fit the CRD's schema."""
    schema = storage_schema(crd)
    jsonschema.validate(apply_defaults(schema, obj), to_jsonschema(schema, strict=strict))
