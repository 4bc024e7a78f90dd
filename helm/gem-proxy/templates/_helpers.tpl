{{/* Names, labels and the rendered gateway config. */}}

{{- define "gem-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gem-proxy.fullname" -}}
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

{{- define "gem-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Pod labels of the gateway: what every selector of the chart matches. */}}
{{- define "gem-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gem-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "gem-proxy.labels" -}}
helm.sh/chart: {{ include "gem-proxy.chart" . }}
app.kubernetes.io/name: {{ include "gem-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gem-proxy
{{- end -}}

{{- define "gem-proxy.redis.fullname" -}}
{{- printf "%s-redis" (include "gem-proxy.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gem-proxy.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gem-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "gem-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gem-proxy.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gem-proxy.secretName" -}}
{{- default (printf "%s-env" (include "gem-proxy.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "gem-proxy.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Redis URL the gateways use: the external one, else the bundled StatefulSet's Service. */}}
{{- define "gem-proxy.redisUrl" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if .Values.redis.enabled -}}
{{- printf "redis://%s.%s.svc:6379/0" (include "gem-proxy.redis.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Whether the bundled Redis StatefulSet is rendered. */}}
{{- define "gem-proxy.bundledRedis" -}}
{{- if and .Values.redis.enabled (not .Values.redis.url) -}}true{{- end -}}
{{- end -}}

{{/* Where a mounted TLS Secret (tls.existingSecret) is found in the container. */}}
{{- define "gem-proxy.tlsDir" -}}/var/run/secrets/gem-proxy/tls{{- end -}}

{{/*
The gateway config (proxy.yaml) as YAML: values.config with what the chart decides itself laid
over it. Everything that depends on the rest of the values is here, in one place.
*/}}
{{- define "gem-proxy.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $server := default dict $cfg.server -}}
{{- $tls := default dict $server.tls -}}
{{- $fullname := include "gem-proxy.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- /* Data the gateway writes: on the pod's writable volume (the root filesystem is read-only). */ -}}
{{- if .Values.tls.existingSecret -}}
{{- $_ := set $tls "cert_path" (printf "%s/tls.crt" (include "gem-proxy.tlsDir" .)) -}}
{{- $_ := set $tls "key_path" (printf "%s/tls.key" (include "gem-proxy.tlsDir" .)) -}}
{{- else -}}
{{- if not (hasKey $tls "cert_path") -}}{{- $_ := set $tls "cert_path" "/var/lib/gem-proxy/tls/cert.pem" -}}{{- end -}}
{{- if not (hasKey $tls "key_path") -}}{{- $_ := set $tls "key_path" "/var/lib/gem-proxy/tls/key.pem" -}}{{- end -}}
{{- end -}}
{{- /* The generated certificate also names the Services, for clients inside the cluster. */ -}}
{{- $san := list -}}
{{- range (default list $tls.san) -}}{{- $san = append $san . -}}{{- end -}}
{{- range (list $fullname (printf "%s.%s" $fullname $ns) (printf "%s.%s.svc" $fullname $ns) (printf "%s.%s.svc.cluster.local" $fullname $ns)) -}}
{{- if not (has . $san) -}}{{- $san = append $san . -}}{{- end -}}
{{- end -}}
{{- $_ := set $tls "san" $san -}}
{{- $acme := default dict $tls.acme -}}
{{- if not (hasKey $acme "cache_dir") -}}{{- $_ := set $acme "cache_dir" "/var/lib/gem-proxy/acme" -}}{{- end -}}
{{- $_ := set $tls "acme" $acme -}}
{{- $_ := set $server "tls" $tls -}}
{{- $_ := set $cfg "server" $server -}}
{{- /* The usage history (SQLite, one file per replica) on the same volume. */ -}}
{{- $usage := default dict $cfg.usage -}}
{{- if not (hasKey $usage "path") -}}{{- $_ := set $usage "path" "/var/lib/gem-proxy/usage.db" -}}{{- end -}}
{{- $_ := set $cfg "usage" $usage -}}
{{- /* Shared state: Redis whenever the chart has one. */ -}}
{{- $redisUrl := include "gem-proxy.redisUrl" . -}}
{{- if $redisUrl -}}
{{- $state := default dict $cfg.state -}}
{{- $redis := default dict $state.redis -}}
{{- $_ := set $state "backend" "redis" -}}
{{- $_ := set $redis "url" $redisUrl -}}
{{- $_ := set $redis "key_prefix" .Values.redis.keyPrefix -}}
{{- $_ := set $redis "sync_interval_ms" (int .Values.redis.syncIntervalMs) -}}
{{- $_ := set $state "redis" $redis -}}
{{- $_ := set $cfg "state" $state -}}
{{- end -}}
{{- /* OpenTelemetry traces. */ -}}
{{- if .Values.otlp.enabled -}}
{{- $metrics := default dict $cfg.metrics -}}
{{- $otlp := default dict $metrics.otlp -}}
{{- $_ := set $otlp "enabled" true -}}
{{- if .Values.otlp.endpoint -}}{{- $_ := set $otlp "endpoint" .Values.otlp.endpoint -}}{{- end -}}
{{- $_ := set $otlp "protocol" .Values.otlp.protocol -}}
{{- $_ := set $otlp "sample_ratio" .Values.otlp.sampleRatio -}}
{{- $_ := set $otlp "service_name" .Values.otlp.serviceName -}}
{{- $_ := set $metrics "otlp" $otlp -}}
{{- $_ := set $cfg "metrics" $metrics -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Names of the environment variables the config refers to as ${VAR} or ${VAR:-default}. */}}
{{- define "gem-proxy.configVars" -}}
{{- $vars := list -}}
{{- range regexFindAll "\\$\\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\\}" (include "gem-proxy.config" .) -1 -}}
{{- $name := regexReplaceAll "^\\$\\{([A-Za-z_][A-Za-z0-9_]*).*$" . "${1}" -}}
{{- if not (contains ":-" .) -}}{{- $vars = append $vars $name -}}{{- end -}}
{{- end -}}
{{- $vars | uniq | toJson -}}
{{- end -}}

{{/* The seconds a pod may take to stop: the preStop pause, the gateway's own grace, and a margin. */}}
{{- define "gem-proxy.terminationGracePeriodSeconds" -}}
{{- $grace := 30 -}}
{{- if and .Values.config.server (hasKey .Values.config.server "shutdown_grace_seconds") -}}
{{- $grace = int .Values.config.server.shutdown_grace_seconds -}}
{{- end -}}
{{- add $grace (int .Values.lifecycle.preStopSleepSeconds) 10 -}}
{{- end -}}

{{/* Whether the gateway runs with more than one replica at any time. */}}
{{- define "gem-proxy.multiReplica" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}
