{{/* Names, labels and small computed values shared by the templates. */}}

{{- define "millipede.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name; short enough for "-coordinator-headless". */}}
{{- define "millipede.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "millipede.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "millipede.selectorLabels" -}}
app.kubernetes.io/name: {{ include "millipede.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "millipede.labels" -}}
helm.sh/chart: {{ include "millipede.chart" . }}
{{ include "millipede.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: millipede
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of one component: (dict "root" $ "component" "coordinator"). */}}
{{- define "millipede.componentLabels" -}}
{{ include "millipede.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "millipede.componentSelectorLabels" -}}
{{ include "millipede.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "millipede.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "millipede.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "millipede.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Service the workers register with: headless, lists the coordinator before it is ready. */}}
{{- define "millipede.coordinatorHeadless" -}}
{{- printf "%s-coordinator-headless" (include "millipede.fullname" .) }}
{{- end }}

{{/* The short name resolves in the pods' own namespace (so manifests rendered from the chart
work in any namespace). */}}
{{- define "millipede.coordinatorAddress" -}}
{{- printf "%s:%d" (include "millipede.coordinatorHeadless" .) (int .Values.coordinator.port) }}
{{- end }}

{{/* Decoder layers of the model: the presets' (qwen1m-spec.md §1), else model.numLayers. */}}
{{- define "millipede.numLayers" -}}
{{- if eq .Values.model.preset "qwen2.5-7b-instruct-1m" }}28
{{- else if eq .Values.model.preset "qwen2.5-14b-instruct-1m" }}48
{{- else }}{{ int .Values.model.numLayers }}
{{- end }}
{{- end }}

{{/* "true" when Prometheus Operator objects of this block are rendered (tri-state enabled). */}}
{{- define "millipede.operatorObjects" -}}
{{- $enabled := .block.enabled }}
{{- if kindIs "invalid" $enabled }}
{{- if .root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- else if $enabled }}true
{{- end }}
{{- end }}

{{/* The model volume of the pods (empty with type none). */}}
{{- define "millipede.modelVolume" -}}
{{- $v := .Values.model.volume }}
{{- if eq $v.type "pvc" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ include "millipede.fullname" . }}-model
    readOnly: {{ $v.readOnly }}
{{- else if eq $v.type "existingClaim" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ $v.existingClaim }}
    readOnly: {{ $v.readOnly }}
{{- else if eq $v.type "hostPath" }}
- name: model
  hostPath:
    path: {{ $v.hostPath.path }}
    type: {{ $v.hostPath.type }}
{{- end }}
{{- end }}

{{- define "millipede.modelVolumeMount" -}}
{{- if ne .Values.model.volume.type "none" }}
- name: model
  mountPath: {{ .Values.model.volume.mountPath }}
  readOnly: {{ .Values.model.volume.readOnly }}
{{- end }}
{{- end }}

{{/* A grpc probe: (dict "port" N "service" "name" "probe" .Values.x.readinessProbe). */}}
{{- define "millipede.grpcProbe" -}}
grpc:
  port: {{ .port }}
  service: {{ .service | quote }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}
