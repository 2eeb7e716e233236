{{/* Cross-field checks the JSON schema cannot express; `validate.yaml` runs them once per render. */}}
{{- define "llm-dispatcher.validate" -}}
{{- if and .Values.tokens .Values.existingTokensSecret.name }}
{{- fail "set either tokens or existingTokensSecret.name, not both" }}
{{- end }}
{{- if eq (int .Values.sender.port) (int .Values.sender.metricsPort) }}
{{- fail (printf "sender.metricsPort must differ from sender.port (%d): /metrics is served apart from the API" (int .Values.sender.port)) }}
{{- end }}
{{- $top := sub (mul (add (int .Values.queue.maxPriority) 1) (int .Values.queue.fairLevels)) 1 }}
{{- if gt (int $top) 255 }}
{{- fail (printf "queue: (maxPriority + 1) × fairLevels − 1 = %d, RabbitMQ allows at most 255 priorities" (int $top)) }}
{{- end }}
{{- $names := dict }}
{{- $served := dict }}
{{- range .Values.models }}
{{- $m := include "llm-dispatcher.model" (dict "ctx" $ "model" .) | fromJson }}
{{- if hasKey $names $m.name }}
{{- fail (printf "models: name %q appears twice" $m.name) }}
{{- end }}
{{- if hasKey $served $m.servedModelName }}
{{- fail (printf "models: servedModelName %q appears twice (one queue per served model)" $m.servedModelName) }}
{{- end }}
{{- $_ := set $names $m.name true }}
{{- $_ := set $served $m.servedModelName true }}
{{- end }}
{{- range .Values.tokens }}
{{- if gt (int .priority) (int $.Values.queue.maxPriority) }}
{{- fail (printf "tokens: %q has priority %d above queue.maxPriority %d" .name (int .priority) (int $.Values.queue.maxPriority)) }}
{{- end }}
{{- end }}
{{- end }}
