{{/* Chart name, overridable. */}}
{{- define "as2-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name: fullnameOverride, else the release name when it already
contains the chart name, else <release>-<chart>. Cut to 48 characters so that suffixes
such as "-edge-public" stay within the 63 characters of a DNS label.
*/}}
{{- define "as2-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* name-version for the helm.sh/chart label. */}}
{{- define "as2-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select every pod of this release. */}}
{{- define "as2-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "as2-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "as2-gateway.labels" -}}
helm.sh/chart: {{ include "as2-gateway.chart" . }}
{{ include "as2-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: as2-gateway
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component; call with (dict "root" $ "component" "edge"). */}}
{{- define "as2-gateway.componentSelectorLabels" -}}
{{ include "as2-gateway.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's resources; call with (dict "root" $ "component" "edge"). */}}
{{- define "as2-gateway.componentLabels" -}}
{{ include "as2-gateway.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "as2-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "as2-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The gateway image reference. */}}
{{- define "as2-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The components in deployment order, and which of them are enabled. */}}
{{- define "as2-gateway.components" -}}
{{- list "routing" "mdn" "edge" "sender" | toJson }}
{{- end }}

{{/* Components that serve gRPC. */}}
{{- define "as2-gateway.grpcComponents" -}}
{{- list "routing" "mdn" "sender" | toJson }}
{{- end }}

{{/* Components that hold our private keys. */}}
{{- define "as2-gateway.keyComponents" -}}
{{- list "edge" "sender" | toJson }}
{{- end }}

{{/* Components that talk to Kafka. */}}
{{- define "as2-gateway.kafkaComponents" -}}
{{- list "edge" "mdn" "sender" | toJson }}
{{- end }}

{{/* Components that call partners' URLs. */}}
{{- define "as2-gateway.partnerComponents" -}}
{{- list "mdn" "sender" | toJson }}
{{- end }}

{{/* Components that call routing (and, for the edge, mdn) over gRPC. */}}
{{- define "as2-gateway.grpcClientComponents" -}}
{{- list "edge" "sender" | toJson }}
{{- end }}

{{/* Does this component use Kafka with these values? (dict "root" $ "component" "mdn") */}}
{{- define "as2-gateway.usesKafka" -}}
{{- if and (has .component (include "as2-gateway.kafkaComponents" . | fromJsonArray)) (or (ne .component "mdn") .root.Values.mdn.tracking.enabled) -}}
true
{{- end }}
{{- end }}

{{/* gRPC URL of a component's internal Service (https under mutual TLS). */}}
{{- define "as2-gateway.grpcUrl" -}}
{{- printf "%s://%s-%s:%d" (ternary "https" "http" .root.Values.grpcTls.enabled) (include "as2-gateway.fullname" .root) .component (int .root.Values.ports.grpc) }}
{{- end }}

{{/* The gRPC credentials: one per component, and the operator's for as2ctl. */}}
{{- define "as2-gateway.grpcCredentials" -}}
{{- list "routing" "mdn" "edge" "sender" "operator" | toJson }}
{{- end }}

{{/* The certificate common name (the role) of a credential. */}}
{{- define "as2-gateway.grpcCommonName" -}}
{{- if eq .credential "operator" }}operator:helm{{ else }}{{ .credential }}{{ end }}
{{- end }}

{{/* Name of the Secret holding a gRPC credential. (dict "root" $ "credential" "edge") */}}
{{- define "as2-gateway.grpcTlsSecretName" -}}
{{- $existing := index .root.Values.grpcTls.existingSecrets .credential }}
{{- if $existing }}{{ $existing }}{{ else }}{{ printf "%s-%s-grpc-tls" (include "as2-gateway.fullname" .root) .credential }}{{ end }}
{{- end }}

{{/* The DNS names a component's gRPC certificate is valid for. */}}
{{- define "as2-gateway.grpcDnsNames" -}}
{{- $service := printf "%s-%s" (include "as2-gateway.fullname" .root) .credential }}
{{- $namespace := .root.Release.Namespace }}
{{- if eq .credential "operator" }}
{{- list | toJson }}
{{- else }}
{{- /* localhost: for as2ctl through `kubectl port-forward`. */ -}}
{{- list $service (printf "%s.%s" $service $namespace) (printf "%s.%s.svc" $service $namespace) (printf "%s.%s.svc.cluster.local" $service $namespace) "localhost" | toJson }}
{{- end }}
{{- end }}

{{/* Name of the Secret with the Redis URL and the Kafka options. */}}
{{- define "as2-gateway.connectionSecretName" -}}
{{- printf "%s-connection" (include "as2-gateway.fullname" .) }}
{{- end }}

{{/* Is a chart-managed connection Secret needed? */}}
{{- define "as2-gateway.managesConnectionSecret" -}}
{{- if or (not .Values.redis.existingSecret) (and .Values.kafka.options (not .Values.kafka.existingSecret)) -}}
true
{{- end }}
{{- end }}

{{/*
Non-secret environment of one component, as ConfigMap data. The Deployment's
checksum/config annotation is the hash of exactly this text.
*/}}
{{- define "as2-gateway.configData" -}}
{{- $root := .root }}
{{- $values := $root.Values }}
{{- $component := .component }}
{{- $settings := index $values $component }}
AS2_HTTP_LISTEN: {{ printf "%s:%d" $values.listenHost (int $values.ports.admin) | quote }}
AS2_LOG_FORMAT: {{ $values.config.logFormat | quote }}
AS2_LOG_FILTER: {{ $values.config.logFilter | quote }}
AS2_SHUTDOWN_DELAY_SECS: {{ $values.config.shutdownDelaySecs | int64 | quote }}
AS2_SHUTDOWN_GRACE_SECS: {{ $values.config.shutdownGraceSecs | int64 | quote }}
AS2_REDIS_KEY_PREFIX: {{ $values.redis.keyPrefix | quote }}
AS2_REDIS_CONNECT_TIMEOUT_MS: {{ $values.redis.connectTimeoutMs | int64 | quote }}
AS2_REDIS_RESPONSE_TIMEOUT_MS: {{ $values.redis.responseTimeoutMs | int64 | quote }}
{{- if $values.redis.tls.caSecret.name }}
AS2_REDIS_TLS_CA: {{ printf "/etc/as2/redis-ca/%s" $values.redis.tls.caSecret.key | quote }}
{{- end }}
{{- if $values.redis.tls.clientSecret }}
AS2_REDIS_TLS_CERT: "/etc/as2/redis-client/tls.crt"
AS2_REDIS_TLS_KEY: "/etc/as2/redis-client/tls.key"
{{- end }}
{{- with $values.config.otlpEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- if has $component (include "as2-gateway.grpcComponents" . | fromJsonArray) }}
AS2_GRPC_LISTEN: {{ printf "%s:%d" $values.listenHost (int $values.ports.grpc) | quote }}
{{- end }}
{{- if $values.grpcTls.enabled }}
AS2_GRPC_TLS_CERT: {{ printf "%s/tls.crt" $values.grpcTls.mountPath | quote }}
AS2_GRPC_TLS_KEY: {{ printf "%s/tls.key" $values.grpcTls.mountPath | quote }}
AS2_GRPC_TLS_CA: {{ printf "%s/ca.crt" $values.grpcTls.mountPath | quote }}
{{- else }}
AS2_GRPC_INSECURE_PLAINTEXT: "true"
{{- end }}
{{- if include "as2-gateway.usesKafka" . }}
AS2_KAFKA_BOOTSTRAP_SERVERS: {{ $values.kafka.bootstrapServers | quote }}
{{- end }}
{{- if has $component (include "as2-gateway.keyComponents" . | fromJsonArray) }}
AS2_KEYS_DIR: {{ $values.keys.mountPath | quote }}
{{- with $values.keys.defaultSigningKeyId }}
AS2_DEFAULT_SIGNING_KEY_ID: {{ . | quote }}
{{- end }}
{{- end }}
{{- if has $component (include "as2-gateway.grpcClientComponents" . | fromJsonArray) }}
AS2_ROUTING_URL: {{ include "as2-gateway.grpcUrl" (dict "root" $root "component" "routing") | quote }}
{{- end }}
{{- if eq $component "edge" }}
{{- with $values.keys.defaultDecryptionKeyId }}
AS2_DEFAULT_DECRYPTION_KEY_ID: {{ . | quote }}
{{- end }}
{{- if $values.mdn.enabled }}
AS2_MDN_URL: {{ include "as2-gateway.grpcUrl" (dict "root" $root "component" "mdn") | quote }}
{{- end }}
AS2_EDGE_LISTEN: {{ printf "%s:%d" $values.listenHost (int $values.ports.as2) | quote }}
{{- if $settings.tls.secretName }}
AS2_EDGE_TLS_CERT: "/etc/as2/edge-tls/tls.crt"
AS2_EDGE_TLS_KEY: "/etc/as2/edge-tls/tls.key"
{{- end }}
AS2_KAFKA_PUBLISH_TIMEOUT_MS: {{ $values.kafka.publishTimeoutMs | int64 | quote }}
AS2_KAFKA_MAX_RECORD_BYTES: {{ $values.kafka.maxRecordBytes | int64 | quote }}
AS2_MAX_BODY_BYTES: {{ $settings.maxBodyBytes | int64 | quote }}
AS2_MAX_DOCUMENT_BYTES: {{ $settings.maxDocumentBytes | int64 | quote }}
AS2_MAX_COMPRESSION_RATIO: {{ $settings.maxCompressionRatio | int64 | quote }}
AS2_CLAIM_CHECK_THRESHOLD_BYTES: {{ $settings.claimCheckThresholdBytes | int64 | quote }}
AS2_MEMORY_BUDGET_MIB: {{ $settings.memoryBudgetMib | int64 | quote }}
AS2_CLAIM_CHECK_RETENTION_DAYS: {{ $settings.claimCheckRetentionDays | int64 | quote }}
AS2_ARCHIVE_RETENTION_DAYS: {{ $settings.archiveRetentionDays | int64 | quote }}
AS2_HEADER_READ_TIMEOUT_SECS: {{ $settings.headerReadTimeoutSecs | int64 | quote }}
AS2_BODY_READ_TIMEOUT_SECS: {{ $settings.bodyReadTimeoutSecs | int64 | quote }}
AS2_BODY_MIN_RATE_BYTES_PER_SEC: {{ $settings.bodyMinRateBytesPerSec | int64 | quote }}
AS2_MAX_CONNECTIONS: {{ $settings.maxConnections | int64 | quote }}
AS2_HTTP2_MAX_CONCURRENT_STREAMS: {{ $settings.http2MaxConcurrentStreams | int64 | quote }}
AS2_RATE_LIMIT_PER_SOURCE_PER_MINUTE: {{ $settings.rateLimitPerSourcePerMinute | int64 | quote }}
AS2_DEDUP_LEASE_MS: {{ $settings.dedupLeaseMs | int64 | quote }}
AS2_DEDUP_RETENTION_SECS: {{ $settings.dedupRetentionSecs | int64 | quote }}
AS2_ORPHAN_SWEEP_AFTER_SECS: {{ $settings.orphanSweepAfterSecs | int64 | quote }}
AS2_ORPHAN_SWEEP_INTERVAL_SECS: {{ $settings.orphanSweepIntervalSecs | int64 | quote }}
AS2_ROUTE_CACHE_TTL_SECS: {{ $settings.routeCacheTtlSecs | int64 | quote }}
AS2_REPORTING_UA: {{ $settings.reportingUa | quote }}
AS2_MESSAGE_ID_DOMAIN: {{ $settings.messageIdDomain | quote }}
AS2_RETRY_AFTER_SECS: {{ $settings.retryAfterSecs | int64 | quote }}
{{- end }}
{{- if has $component (list "edge" "sender") }}
AS2_KAFKA_BROKER_PAUSE_MS: {{ $values.kafka.brokerPauseMs | int64 | quote }}
{{- with $values.objectStore }}
{{- if .url }}
AS2_OBJECT_STORE_URL: {{ .url | quote }}
{{- with .endpoint }}
AS2_OBJECT_STORE_ENDPOINT: {{ . | quote }}
{{- end }}
{{- with .region }}
AS2_OBJECT_STORE_REGION: {{ . | quote }}
{{- end }}
{{- with .sseKmsKeyId }}
AS2_OBJECT_STORE_SSE_KMS_KEY_ID: {{ . | quote }}
{{- end }}
AS2_OBJECT_STORE_ALLOW_HTTP: {{ .allowHttp | quote }}
AS2_OBJECT_STORE_VIRTUAL_HOSTED_STYLE: {{ .virtualHostedStyle | quote }}
AS2_OBJECT_STORE_PART_SIZE_MIB: {{ .partSizeMib | int64 | quote }}
AS2_OBJECT_STORE_MAX_CONCURRENT_PARTS: {{ .maxConcurrentParts | int64 | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- if eq $component "sender" }}
AS2_ARCHIVE_RETENTION_DAYS: {{ $values.edge.archiveRetentionDays | int64 | quote }}
{{- end }}
{{- if eq $component "mdn" }}
AS2_MDN_WORKERS: {{ $settings.workers | int64 | quote }}
AS2_MDN_MAX_ATTEMPTS: {{ $settings.maxAttempts | int64 | quote }}
AS2_MDN_MAX_AGE_SECS: {{ $settings.maxAgeSecs | int64 | quote }}
AS2_MDN_INITIAL_BACKOFF_MS: {{ $settings.initialBackoffMs | int64 | quote }}
AS2_MDN_MAX_BACKOFF_MS: {{ $settings.maxBackoffMs | int64 | quote }}
AS2_MDN_ATTEMPT_TIMEOUT_MS: {{ $settings.attemptTimeoutMs | int64 | quote }}
AS2_MDN_RECLAIM_IDLE_MS: {{ $settings.reclaimIdleMs | int64 | quote }}
AS2_MDN_POLL_INTERVAL_MS: {{ $settings.pollIntervalMs | int64 | quote }}
AS2_MDN_STATUS_TTL_SECS: {{ $settings.statusTtlSecs | int64 | quote }}
AS2_KAFKA_TRACKING_TOPIC: {{ $settings.tracking.topic | quote }}
{{- if $settings.tlsCaSecret.name }}
AS2_MDN_TLS_CA_FILE: {{ printf "/etc/as2/mdn-ca/%s" $settings.tlsCaSecret.key | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Fails rendering on settings the services would refuse at start-up. */}}
{{- define "as2-gateway.validate" -}}
{{- $values := .Values }}
{{- range $component := include "as2-gateway.components" . | fromJsonArray }}
{{- $settings := index $values $component }}
{{- if $settings.enabled }}
{{- /* The runtime gives front ends 2 s beyond the grace period to commit what they finished. */ -}}
{{- $drain := add $values.config.shutdownDelaySecs $values.config.shutdownGraceSecs 2 | int }}
{{- if le (int $settings.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must exceed config.shutdownDelaySecs + config.shutdownGraceSecs + 2 s of clean-up (%v), or pods are killed while draining" $component $settings.terminationGracePeriodSeconds $drain) }}
{{- end }}
{{- if and (not (kindIs "invalid" $settings.pdb.minAvailable)) (not (kindIs "invalid" $settings.pdb.maxUnavailable)) }}
{{- fail (printf "%s.pdb: set minAvailable or maxUnavailable, not both" $component) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $values.grpcTls.enabled $values.grpcTls.certManager.enabled (not $values.grpcTls.certManager.issuerRef.name) }}
{{- fail "grpcTls.certManager.issuerRef.name is required with grpcTls.certManager.enabled" }}
{{- end }}
{{- if $values.mdn.enabled }}
{{- if le (int64 $values.mdn.reclaimIdleMs) (int64 $values.mdn.attemptTimeoutMs) }}
{{- fail "mdn.reclaimIdleMs must exceed mdn.attemptTimeoutMs, or live replicas lose their jobs to others" }}
{{- end }}
{{- if lt (int64 $values.mdn.statusTtlSecs) (int64 $values.mdn.maxAgeSecs) }}
{{- fail "mdn.statusTtlSecs must be at least mdn.maxAgeSecs" }}
{{- end }}
{{- end }}
{{- range $values.keys.secrets }}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]*$" .id) }}
{{- fail (printf "keys.secrets: id %q must be a plain directory name" .id) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Data of the chart-managed connection Secret (base64), also hashed into checksum/secret. */}}
{{- define "as2-gateway.connectionSecretData" -}}
{{- if not .Values.redis.existingSecret }}
redis-url: {{ .Values.redis.url | b64enc | quote }}
{{- end }}
{{- if and .Values.kafka.options (not .Values.kafka.existingSecret) }}
kafka-options: {{ .Values.kafka.options | b64enc | quote }}
{{- end }}
{{- end }}

{{/* The env entries read from Secrets; call with (dict "root" $ "component" "edge"). */}}
{{- define "as2-gateway.secretEnv" -}}
{{- $values := .root.Values }}
{{- /* A service's own Redis user (redis.users.<component>) wins over the shared URL. */ -}}
{{- $user := index ($values.redis.users | default dict) .component | default dict }}
- name: AS2_REDIS_URL
  valueFrom:
    secretKeyRef:
      {{- if $user.existingSecret }}
      name: {{ $user.existingSecret }}
      key: {{ $user.existingSecretKey | default "redis-url" }}
      {{- else }}
      name: {{ $values.redis.existingSecret | default (include "as2-gateway.connectionSecretName" .root) }}
      key: {{ ternary $values.redis.existingSecretKey "redis-url" (ne $values.redis.existingSecret "") }}
      {{- end }}
{{- if and (include "as2-gateway.usesKafka" .) (or $values.kafka.options $values.kafka.existingSecret) }}
- name: AS2_KAFKA_OPTIONS
  valueFrom:
    secretKeyRef:
      name: {{ $values.kafka.existingSecret | default (include "as2-gateway.connectionSecretName" .root) }}
      key: {{ ternary $values.kafka.existingSecretKey "kafka-options" (ne $values.kafka.existingSecret "") }}
{{- end }}
{{- if and (has .component (list "edge" "sender")) $values.objectStore.url $values.objectStore.existingSecret }}
- name: AS2_OBJECT_STORE_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $values.objectStore.existingSecret }}
      key: {{ $values.objectStore.accessKeyIdKey }}
- name: AS2_OBJECT_STORE_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $values.objectStore.existingSecret }}
      key: {{ $values.objectStore.secretAccessKeyKey }}
{{- end }}
{{- end }}

{{/* A NetworkPolicy egress rule from {to: [peers], ports: [numbers]}; no peers: any destination. */}}
{{- define "as2-gateway.egressRule" -}}
- ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* as2ctl's gRPC credential in the `helm test` pod: the operator's. */}}
{{- define "as2-gateway.testGrpcEnv" -}}
{{- if .Values.grpcTls.enabled }}
- name: AS2_GRPC_TLS_CERT
  value: {{ printf "%s/tls.crt" .Values.grpcTls.mountPath | quote }}
- name: AS2_GRPC_TLS_KEY
  value: {{ printf "%s/tls.key" .Values.grpcTls.mountPath | quote }}
- name: AS2_GRPC_TLS_CA
  value: {{ printf "%s/ca.crt" .Values.grpcTls.mountPath | quote }}
{{- else }}
- name: AS2_GRPC_INSECURE_PLAINTEXT
  value: "true"
{{- end }}
{{- end }}
