{{/* Chart name, truncated to the 63 characters a label value may hold. */}}
{{- define "openanomaly.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Resource name prefix. KubeRay appends suffixes (e.g. "-raycluster-xxxxx-head-svc") to the
RayService name, so it is kept to 40 characters to leave room under the 63 limit.
*/}}
{{- define "openanomaly.fullname" -}}
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

{{- define "openanomaly.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "openanomaly.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openanomaly.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "openanomaly.labels" -}}
helm.sh/chart: {{ include "openanomaly.chart" . }}
{{ include "openanomaly.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: openanomaly
{{- end }}

{{- define "openanomaly.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* ConfigMap with pipelines.yaml: the user's, or the one this chart renders. */}}
{{- define "openanomaly.configMapName" -}}
{{- default (printf "%s-config" (include "openanomaly.fullname" .)) .Values.existingConfigMap }}
{{- end }}

{{/* Secret whose keys become environment variables in every Ray container. */}}
{{- define "openanomaly.secretName" -}}
{{- default (printf "%s-env" (include "openanomaly.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/* Secret with the Ray auth token under the key auth_token. */}}
{{- define "openanomaly.authSecretName" -}}
{{- default (printf "%s-ray-auth" (include "openanomaly.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* Render a value as YAML, passing it through tpl so values may name the release. */}}
{{- define "openanomaly.rayStartParams" -}}
{{- $params := dict }}
{{- range $key, $value := . }}{{ $_ := set $params $key ($value | toString) }}{{ end }}
{{- toYaml $params }}
{{- end }}

{{- define "openanomaly.tplYaml" -}}
{{- tpl (toYaml .value) .context }}
{{- end }}

{{/* Pod-level fields shared by head and worker templates. Argument: (dict "root" $ "group" $values). */}}
{{- define "openanomaly.podSpec" -}}
{{- $root := .root -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with $root.Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: openanomaly-config
    configMap:
      name: {{ include "openanomaly.configMapName" $root }}
  {{- if $root.Values.shmSize }}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $root.Values.shmSize }}
  {{- end }}
  {{- with $root.Values.extraVolumes }}
  {{- include "openanomaly.tplYaml" (dict "value" . "context" $root) | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Container fields shared by head and workers (everything but name, ports, resources). */}}
{{- define "openanomaly.containerCommon" -}}
image: {{ include "openanomaly.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- with .Values.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
env:
  - name: OPENANOMALY_CONFIG
    value: /etc/openanomaly/pipelines.yaml
  - name: RAY_USAGE_STATS_ENABLED
    value: "0"
  {{- if and (eq .Values.auth.mode "token") .Values.auth.injectEnv }}
  - name: RAY_AUTH_MODE
    value: token
  - name: RAY_AUTH_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ include "openanomaly.authSecretName" . }}
        key: auth_token
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- include "openanomaly.tplYaml" (dict "value" . "context" $) | nindent 2 }}
  {{- end }}
envFrom:
  - secretRef:
      name: {{ include "openanomaly.secretName" . }}
volumeMounts:
  - name: openanomaly-config
    mountPath: /etc/openanomaly
    readOnly: true
  {{- if .Values.shmSize }}
  - name: dshm
    mountPath: /dev/shm
  {{- end }}
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Pod metadata shared by head and workers. Argument: (dict "root" $ "component" "head"). */}}
{{- define "openanomaly.podMetadata" -}}
labels:
  {{- include "openanomaly.labels" .root | nindent 2 }}
  app.kubernetes.io/component: {{ .component }}
  {{- with .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  {{- /*
  New credentials reach the pods only through a restart (they are environment variables).
  No checksum of the ConfigMap: mounted files update in place and OpenAnomaly watches
  pipelines.yaml, whereas a changed pod template makes KubeRay build a whole new cluster.
  */}}
  checksum/secret: {{ include (print .root.Template.BasePath "/secret.yaml") .root | sha256sum }}
  {{- with .root.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Checks that a schema cannot express: fail at render time with the value at fault. */}}
{{- define "openanomaly.validate" -}}
{{- range $kind := list "cpu" "gpu" }}
{{- $group := index $.Values.workers $kind }}
{{- if and $group.enabled (or (gt (int $group.minReplicas) (int $group.replicas)) (gt (int $group.replicas) (int $group.maxReplicas))) }}
{{- fail (printf "workers.%s: need minReplicas <= replicas <= maxReplicas, got %v <= %v <= %v" $kind $group.minReplicas $group.replicas $group.maxReplicas) }}
{{- end }}
{{- end }}
{{- if and .Values.workers.cpu.enabled .Values.workers.gpu.enabled (eq .Values.workers.cpu.groupName .Values.workers.gpu.groupName) }}
{{- fail (printf "workers.cpu.groupName and workers.gpu.groupName are both %q; worker groups need distinct names" .Values.workers.cpu.groupName) }}
{{- end }}
{{- if and (ne .Values.auth.mode "token") (or .Values.auth.existingSecret .Values.auth.token) }}
{{- fail "auth.existingSecret / auth.token are set but auth.mode is not \"token\"; remove them or set auth.mode=token" }}
{{- end }}
{{- end }}
