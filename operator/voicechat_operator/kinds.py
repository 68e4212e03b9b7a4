"""The Kubernetes kinds the operator reads and writes: one registry for URLs, watches and RBAC."""

from __future__ import annotations

from dataclasses import dataclass

from voicechat_operator import API_VERSION, KIND, PLURAL


@dataclass(frozen=True)
class Kind:
    """One API resource type (the parts of discovery the operator needs)."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True
    # Children the operator may have to remove again (rendered only for some specs).
    optional: bool = False

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The REST path of the collection, or of one object (and a subresource of it)."""
        root = f"/apis/{self.api_version}" if self.group else f"/api/{self.version}"
        parts = [root]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
            if subresource:
                parts.append(subresource)
        return "/".join(parts)


VOICECHAT = Kind(API_VERSION, KIND, PLURAL)
CONFIG_MAP = Kind("v1", "ConfigMap", "configmaps")
# Services, Deployments and NetworkPolicies are optional: a hosted LLM engine (external, bedrock) has no
# NAME-llm ones, so switching to it deletes them.
SERVICE = Kind("v1", "Service", "services", optional=True)
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments", optional=True)
HPA = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
PDB = Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
NETWORK_POLICY = Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", optional=True)
# The session pods' own identity (IRSA / EKS Pod Identity), rendered only when wanted.
SERVICE_ACCOUNT = Kind("v1", "ServiceAccount", "serviceaccounts", optional=True)
POD_MONITOR = Kind("monitoring.coreos.com/v1", "PodMonitor", "podmonitors", optional=True)
# Generated once per VoiceChat and never watched (watching would mean reading every Secret of the namespace).
SECRET = Kind("v1", "Secret", "secrets")

# Every kind a VoiceChat's children can have; the render functions only produce these.
CHILD_KINDS: tuple[Kind, ...] = (
    CONFIG_MAP,
    SERVICE,
    DEPLOYMENT,
    HPA,
    PDB,
    NETWORK_POLICY,
    SERVICE_ACCOUNT,
    POD_MONITOR,
)
GENERATED_KINDS: tuple[Kind, ...] = (SECRET,)
_BY_API_KIND = {(k.api_version, k.kind): k for k in (*CHILD_KINDS, *GENERATED_KINDS, VOICECHAT)}


def kind_of(obj: dict[str, object]) -> Kind:
    """The registered kind of a rendered or fetched object (KeyError for anything else)."""
    return _BY_API_KIND[(str(obj["apiVersion"]), str(obj["kind"]))]
