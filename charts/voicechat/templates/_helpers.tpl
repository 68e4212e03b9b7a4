{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "voicechat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release name, plus the chart name unless the release name already contains it. */}}
{{- define "voicechat.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "voicechat.operatorName" -}}
{{- printf "%s-operator" (include "voicechat.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "voicechat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "voicechat.labels" -}}
helm.sh/chart: {{ include "voicechat.chart" . }}
app.kubernetes.io/name: {{ include "voicechat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: voicechat
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector of the operator pod (immutable on a Deployment: keep it small and stable). */}}
{{- define "voicechat.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "voicechat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "voicechat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "voicechat.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "voicechat.operatorImage" -}}
{{- $img := .Values.operator.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* Name and namespace of the optional VoiceChat instance. */}}
{{- define "voicechat.instanceName" -}}
{{- default (include "voicechat.fullname" .) .Values.voiceChat.name }}
{{- end }}

{{- define "voicechat.instanceNamespace" -}}
{{- default .Release.Namespace .Values.voiceChat.namespace }}
{{- end }}

{{/* Where the operator's children expose /metrics: container and Service port names per component. */}}
{{- define "voicechat.metricsEndpoints" -}}
session:
  podPort: metrics
  servicePort: metrics
  serviceComponent: metrics
llm:
  podPort: gate
  servicePort: gate
  serviceComponent: llm
{{- end }}

{{/*
Namespaces the operator watches, as a JSON list; [] means every namespace. Default: the release namespace only
(operator.clusterWide opts in to every namespace; operator.watchNamespaces names others).
*/}}
{{- define "voicechat.watchNamespaces" -}}
{{- if .Values.operator.clusterWide }}
{{- if .Values.operator.watchNamespaces }}
{{- fail "operator.clusterWide watches every namespace: leave operator.watchNamespaces empty, or set clusterWide=false" }}
{{- end }}
{{- list | toJson }}
{{- else if .Values.operator.watchNamespaces }}
{{- .Values.operator.watchNamespaces | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* Scrape the namespaces the operator watches (all of them when it watches every namespace). */}}
{{- define "voicechat.monitorNamespaceSelector" -}}
{{- $watch := include "voicechat.watchNamespaces" . | fromJsonArray }}
{{- if $watch }}
matchNames:
  {{- toYaml $watch | nindent 2 }}
{{- else }}
any: true
{{- end }}
{{- end }}

{{/* Port of the NAME-session Service the operator creates: spec.service.port, 80 when unset (the CRD's default). */}}
{{- define "voicechat.sessionServicePort" -}}
{{- $svc := .Values.voiceChat.spec.service | default dict }}
{{- $svc.port | default 80 }}
{{- end }}

{{/* Operator settings (voicechat_operator.settings.OperatorSettings, env prefix VOICECHAT_OPERATOR_). */}}
{{- define "voicechat.operatorEnv" -}}
- name: VOICECHAT_OPERATOR_NAMESPACES
  value: {{ join "," (include "voicechat.watchNamespaces" . | fromJsonArray) | quote }}
{{- if .Values.operator.peering.enabled }}
- name: VOICECHAT_OPERATOR_PEERING_NAME
  value: {{ include "voicechat.peeringName" . | quote }}
{{- else }}
- name: VOICECHAT_OPERATOR_STANDALONE
  value: "true"
{{- end }}
- name: VOICECHAT_OPERATOR_HEALTH_PORT
  value: {{ .Values.operator.healthPort | quote }}
- name: VOICECHAT_OPERATOR_LOG_LEVEL
  value: {{ .Values.operator.logLevel | quote }}
{{- end }}

{{/* kopf peering object shared by the operator's replicas (and by any other copy of this release). */}}
{{- define "voicechat.peeringName" -}}
{{- include "voicechat.operatorName" . }}
{{- end }}
