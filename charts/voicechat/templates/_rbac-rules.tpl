{{/*
Exactly the API calls the operator makes: voicechat_operator.rbac.namespaced_rules() and cluster_rules(), which
are derived from its code and kopf's needs. tests/chart/test_rbac.py fails when these grant more or less.
*/}}

{{/* Namespaced resources: part of the ClusterRole, or a Role in each watched namespace. */}}
{{- define "voicechat.operatorRules" -}}
# The VoiceChats: kopf watches them and keeps handler progress in annotations; the operator writes status.
- apiGroups: ["voicechat.io"]
  resources: ["voicechats"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["voicechat.io"]
  resources: ["voicechats/status"]
  verbs: ["get", "patch"]
# Owner references with blockOwnerDeletion (OwnerReferencesPermissionEnforcement).
- apiGroups: ["voicechat.io"]
  resources: ["voicechats/finalizers"]
  verbs: ["update"]
# Children, written by server-side apply (create + patch) and watched for drift. Deleted only when a spec
# stops wanting them: the PodMonitor, the session ServiceAccount, and the NAME-llm Deployment, Service and
# NetworkPolicy when the LLM moves to a hosted engine (garbage collection removes the rest).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["serviceaccounts", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Secrets the operator generates once per VoiceChat (the LLM API key): read, created when absent, missing
# keys added; and the referenced key of an external LLM, read by name to check the endpoint. Never listed or
# watched, so it cannot enumerate the namespace's Secrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# kopf posts events about handler progress and failures.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# kopf peering in a watched namespace.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}

{{/* Cluster-scoped resources: always a ClusterRole. */}}
{{- define "voicechat.operatorClusterRules" -}}
# kopf's scanning follows CRDs and namespaces appearing and going.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
# kopf peering when watching every namespace.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
