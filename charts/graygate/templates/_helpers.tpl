{{/* Chart name. */}}
{{- define "graygate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-based prefix for every object. */}}
{{- define "graygate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Selector labels. */}}
{{- define "graygate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "graygate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Common labels. */}}
{{- define "graygate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "graygate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "graygate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "graygate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The operator's rules in the namespaces it watches. Keep equal to OPERATOR_ACCESS (scope Watched) in
src/access.rs; tests/chart.rs fails when they differ.
*/}}
{{- define "graygate.watchedRules" -}}
- apiGroups: [graygate.io]
  resources: [changerequests]
  verbs: [get, list, watch, create, patch]
- apiGroups: [graygate.io]
  resources: [changerequests/status]
  verbs: [patch]
- apiGroups: [graygate.io]
  resources: [changepolicies]
  verbs: [list, watch, patch]
- apiGroups: [graygate.io]
  resources: [changepolicies/status]
  verbs: [patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [patch]
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch]
- apiGroups: [apps]
  resources: [controllerrevisions]
  verbs: [get, list, watch]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, delete]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* The operator's rules in its own namespace (OPERATOR_ACCESS, scope Operator). */}}
{{- define "graygate.operatorRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, update]
{{- end -}}

{{/* PromQL label matchers selecting the operator's own series. */}}
{{- define "graygate.operatorSeries" -}}
job="{{ include "graygate.fullname" . }}-metrics",namespace="{{ .Release.Namespace }}"
{{- end -}}

{{/*
The operator's notification file: each sink's URL comes from its Secret, mounted at
/etc/graygate/notifications/<sink>/url.
*/}}
{{- define "graygate.notificationsConfig" -}}
{{- with .Values.notifications.dashboardUrl }}
dashboardUrl: {{ . | quote }}
{{- end }}
sinks:
{{- range .Values.notifications.sinks }}
  - name: {{ .name | quote }}
    format: {{ .format | default "webhook" | quote }}
    urlFile: /etc/graygate/notifications/{{ .name }}/url
    {{- with .namespaces }}
    namespaces: {{ toJson . }}
    {{- end }}
    {{- with .events }}
    events: {{ toJson . }}
    {{- end }}
{{- end }}
{{- end }}
