{{/* Chart name, truncated to 63 characters (the DNS label limit). */}}
{{- define "llm-dispatcher.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name, truncated to 63 characters. */}}
{{- define "llm-dispatcher.fullname" -}}
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

{{- define "llm-dispatcher.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: minimal and immutable. A Deployment's or StatefulSet's selector cannot change after
creation, so nothing that changes between releases (chart version, app version, user labels) goes here.
Call with (dict "ctx" $ "component" "sender") and optionally "model" (the models[] entry name).
*/}}
{{- define "llm-dispatcher.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-dispatcher.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .model }}
llm-dispatcher/model: {{ . }}
{{- end }}
{{- end }}

{{/* Full labels for metadata: selector labels + version, chart and the user's commonLabels. */}}
{{- define "llm-dispatcher.labels" -}}
helm.sh/chart: {{ include "llm-dispatcher.chart" .ctx }}
{{ include "llm-dispatcher.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: {{ include "llm-dispatcher.name" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "llm-dispatcher.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-dispatcher.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference; call with (dict "ctx" $ "image" .Values.sender.image) */}}
{{- define "llm-dispatcher.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .ctx.Chart.AppVersion | toString) }}
{{- end }}

{{/*
Overlay: a deep copy of "base" with every non-null key of "over" written over it; maps are merged key by
key, everything else (lists included) replaced. Unlike sprig's merge, false and 0 in "over" win.
Returns JSON (templates can only return strings): use with `| fromJson`.
*/}}
{{- define "llm-dispatcher.overlay" -}}
{{- $out := deepCopy (.base | default dict) }}
{{- range $k, $v := (.over | default dict) }}
{{- if and (kindIs "map" $v) (kindIs "map" (get $out $k)) }}
{{- $_ := set $out $k (include "llm-dispatcher.overlay" (dict "base" (get $out $k) "over" $v) | fromJson) }}
{{- else if not (kindIs "invalid" $v) }}
{{- $_ := set $out $k $v }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* One models[] entry with modelDefaults filled in and servedModelName resolved. Returns JSON. */}}
{{- define "llm-dispatcher.model" -}}
{{- $m := include "llm-dispatcher.overlay" (dict "base" .ctx.Values.modelDefaults "over" .model) | fromJson }}
{{- if not $m.servedModelName }}
{{- $_ := set $m "servedModelName" $m.model }}
{{- end }}
{{- toJson $m }}
{{- end }}

{{/* Name of a model's StatefulSet and headless Service: 52 characters at most, so that pod names plus
the controller-revision-hash label stay within 63. */}}
{{- define "llm-dispatcher.modelFullname" -}}
{{- printf "%s-%s" (include "llm-dispatcher.fullname" .ctx | trunc (int (sub 51 (len .name)))) .name | trimSuffix "-" }}
{{- end }}

{{/*
A value rendered as an environment variable string: strings as they are, numbers and booleans as JSON
(so 10485760 does not become 1.048576e+07), lists and maps as JSON (pydantic-settings parses JSON).
*/}}
{{- define "llm-dispatcher.envValue" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/* `settings` map -> env entries LLMD_<KEY_IN_SNAKE_CASE>; null values are left out. */}}
{{- define "llm-dispatcher.settingsEnv" -}}
{{- range $k, $v := . }}
{{- if not (kindIs "invalid" $v) }}
- name: {{ printf "LLMD_%s" ($k | snakecase | upper) }}
  value: {{ include "llm-dispatcher.envValue" $v | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The environment the sender and every consumer share: where they listen, how they log, the queue settings
they must agree on, and the broker URL. Call with (dict "ctx" $ "port" <port> "logLevel" <level>).
*/}}
{{- define "llm-dispatcher.commonEnv" -}}
- name: LLMD_HOST
  value: "0.0.0.0"
- name: LLMD_PORT
  value: {{ .port | quote }}
- name: LLMD_LOG_LEVEL
  value: {{ .logLevel | quote }}
- name: LLMD_LOG_FORMAT
  value: {{ .ctx.Values.logFormat | quote }}
- name: LLMD_QUEUE_PREFIX
  value: {{ .ctx.Values.queue.prefix | quote }}
- name: LLMD_MAX_PRIORITY
  value: {{ .ctx.Values.queue.maxPriority | quote }}
- name: LLMD_FAIR_LEVELS
  value: {{ .ctx.Values.queue.fairLevels | quote }}
{{ include "llm-dispatcher.amqpEnv" .ctx | trim }}
{{- end }}

{{/*
Seconds a service may take to drain at shutdown (`shutdownGraceS` of a settings map), rounded up, so that
the pod's grace period is never shorter than the service's own. 0 is a valid choice and stays 0; a key
left out (or set to null) is the services' own default, 30.
*/}}
{{- define "llm-dispatcher.shutdownGraceS" -}}
{{- $v := index . "shutdownGraceS" }}
{{- if kindIs "invalid" $v }}30{{ else }}{{ $v | float64 | ceil | int }}{{ end }}
{{- end }}

{{/*
LLMD_AMQP_URL, built from Secrets without ever putting a credential in the manifest: the user name and
password come from secretKeyRef env vars, and Kubernetes expands $(VAR) references to earlier env vars
in the same container when it starts it. Credentials must therefore be URL-safe (the operator's
generated ones are); otherwise put a complete URL in the Secret and set `urlKey`.
*/}}
{{- define "llm-dispatcher.amqpEnv" -}}
{{- $r := .Values.rabbitmq }}
{{- if eq $r.mode "internal" }}
{{- $secret := printf "%s-default-user" (include "llm-dispatcher.rabbitmqName" .) }}
- name: AMQP_USERNAME
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: username}}
- name: AMQP_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: password}}
{{- if eq (int $r.internal.replicas) 1 }}
- name: AMQP_HOST
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: host}}
{{- end }}
- name: AMQP_PORT
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: port}}
- name: LLMD_AMQP_URL
{{- if eq (int $r.internal.replicas) 1 }}
  value: "amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@$(AMQP_HOST):$(AMQP_PORT)/"
{{- else }}
  {{- /* every node by its name in the operator's headless Service <name>-nodes, node 0 first */}}
  {{- $name := include "llm-dispatcher.rabbitmqName" . }}
  {{- $urls := list }}
  {{- range $i := until (int $r.internal.replicas) }}
  {{- $urls = append $urls (printf "amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@%s-server-%d.%s-nodes.%s.svc:$(AMQP_PORT)/" $name $i $name $.Release.Namespace) }}
  {{- end }}
  value: {{ join "," $urls | quote }}
{{- end }}
{{- else if $r.external.urlKey }}
- name: LLMD_AMQP_URL
  valueFrom: {secretKeyRef: {name: {{ required "rabbitmq.external.existingSecret is required in external mode" $r.external.existingSecret }}, key: {{ $r.external.urlKey }}}}
{{- else }}
{{- $secret := required "rabbitmq.external.existingSecret is required in external mode" $r.external.existingSecret }}
{{- $vhost := ternary "" ($r.external.vhost | urlquery) (eq $r.external.vhost "/") }}
- name: AMQP_USERNAME
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: {{ $r.external.usernameKey }}}}
- name: AMQP_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: {{ $r.external.passwordKey }}}}
{{- $hosts := $r.external.hosts }}
{{- if not $hosts }}
{{- $hosts = list (required "rabbitmq.external.host is required in external mode" $r.external.host) }}
{{- end }}
{{- $urls := list }}
{{- range $host := $hosts }}
{{- $urls = append $urls (printf "%s://$(AMQP_USERNAME):$(AMQP_PASSWORD)@%s:%d/%s" (ternary "amqps" "amqp" $r.external.tls) $host (int $r.external.port) $vhost) }}
{{- end }}
- name: LLMD_AMQP_URL
  value: {{ join "," $urls | quote }}
{{- end }}
{{- end }}

{{- define "llm-dispatcher.rabbitmqName" -}}
{{- printf "%s-rabbitmq" (include "llm-dispatcher.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "llm-dispatcher.databaseName" -}}
{{- printf "%s-db" (include "llm-dispatcher.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{- define "llm-dispatcher.databaseSecretName" -}}
{{- .Values.database.internal.existingSecret | default (include "llm-dispatcher.databaseName" .) }}
{{- end }}

{{- define "llm-dispatcher.databaseScheme" -}}
{{- ternary "postgresql+asyncpg" "mysql+aiomysql" (eq .Values.database.type "postgresql") }}
{{- end }}

{{/* LLMD_DATABASE_URL from Secrets, the same way as LLMD_AMQP_URL. */}}
{{- define "llm-dispatcher.databaseEnv" -}}
{{- $d := .Values.database }}
{{- $defaultPort := ternary 5432 3306 (eq $d.type "postgresql") }}
{{- if eq $d.mode "internal" }}
- name: DB_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "llm-dispatcher.databaseSecretName" . }}, key: password}}
- name: LLMD_DATABASE_URL
  value: {{ printf "%s://%s:$(DB_PASSWORD)@%s:%d/%s" (include "llm-dispatcher.databaseScheme" .) $d.internal.username (include "llm-dispatcher.databaseName" .) (int $defaultPort) $d.internal.database | quote }}
{{- else if $d.external.urlKey }}
- name: LLMD_DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ required "database.external.existingSecret is required in external mode" $d.external.existingSecret }}, key: {{ $d.external.urlKey }}}}
{{- else }}
{{- $secret := required "database.external.existingSecret is required in external mode" $d.external.existingSecret }}
- name: DB_USERNAME
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: {{ $d.external.usernameKey }}}}
- name: DB_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: {{ $d.external.passwordKey }}}}
- name: LLMD_DATABASE_URL
  value: {{ printf "%s://$(DB_USERNAME):$(DB_PASSWORD)@%s:%d/%s%s" (include "llm-dispatcher.databaseScheme" .) (required "database.external.host is required in external mode" $d.external.host) (int ($d.external.port | default $defaultPort)) $d.external.database (ternary (printf "?%s" $d.external.query) "" (ne $d.external.query "")) | quote }}
{{- end }}
{{- end }}

{{/* Name and key of the Secret holding the token list, or "" when no tokens are seeded. */}}
{{- define "llm-dispatcher.tokensSecret" -}}
{{- if .Values.existingTokensSecret.name }}
{{- .Values.existingTokensSecret.name }}
{{- else if .Values.tokens }}
{{- printf "%s-tokens" (include "llm-dispatcher.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{- define "llm-dispatcher.tokensKey" -}}
{{- ternary .Values.existingTokensSecret.key "tokens.json" (ne .Values.existingTokensSecret.name "") }}
{{- end }}

{{/* JSON list of the served model names (LLMD_MODELS). */}}
{{- define "llm-dispatcher.servedModels" -}}
{{- $out := list }}
{{- range .Values.models }}
{{- $m := include "llm-dispatcher.model" (dict "ctx" $ "model" .) | fromJson }}
{{- $out = append $out $m.servedModelName }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The Secret that signs console sessions: the operator's, or the one the chart creates. */}}
{{- define "llm-dispatcher.consoleSecret" -}}
{{- .Values.console.sessionSecret.existingSecret | default (printf "%s-console" (include "llm-dispatcher.fullname" . | trunc 55 | trimSuffix "-")) }}
{{- end }}
