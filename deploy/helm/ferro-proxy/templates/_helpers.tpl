{{/* Names and labels */}}
{{- define "ferro-proxy.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ferro-proxy.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ferro-proxy.labels" -}}
app.kubernetes.io/name: {{ include "ferro-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ferro-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferro-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ferro-proxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "ferro-proxy.configMapName" -}}
{{- default (printf "%s-config" (include "ferro-proxy.fullname" .)) .Values.existingConfigMap -}}
{{- end -}}

{{- define "ferro-proxy.secretName" -}}
{{- default (printf "%s-provider-keys" (include "ferro-proxy.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{- define "ferro-proxy.securityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser | default 10001 }}
runAsGroup: {{ .runAsUser | default 10001 }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
ferro-proxy.sidecar: the sidecar container, for charts that add it explicitly (template mode).
Call it with a dict; every key is optional:
  image, configMap, secret, proxyPort, adminPort, native (bool), drainSeconds, logLevel,
  resources (a Kubernetes resources object), runAsUser.
Put it under `initContainers:` when native is true (the default), else under `containers:`,
and add the volumes from ferro-proxy.sidecarVolumes.
*/}}
{{- define "ferro-proxy.sidecar" -}}
{{- $proxyPort := .proxyPort | default 8080 -}}
{{- $adminPort := .adminPort | default 8081 -}}
- name: ferro-proxy
  image: {{ .image | default "ghcr.io/ferro-proxy/ferro-proxy:0.1.0" | quote }}
  imagePullPolicy: IfNotPresent
  {{- if (ne (toString .native) "false") }}
  restartPolicy: Always
  {{- end }}
  args:
    - --config
    - /etc/ferro-proxy/config.yaml
    - --listen
    - {{ printf "127.0.0.1:%v" $proxyPort | quote }}
    - --admin-listen
    - {{ printf "0.0.0.0:%v" $adminPort | quote }}
    - --drain-seconds
    - {{ .drainSeconds | default 20 | quote }}
  env:
    - name: LOG_LEVEL
      value: {{ .logLevel | default "info" | quote }}
  {{- if .secret }}
  envFrom:
    - secretRef:
        name: {{ .secret }}
        optional: true
  {{- end }}
  ports:
    - name: ferro-admin
      containerPort: {{ $adminPort }}
      protocol: TCP
  volumeMounts:
    - name: ferro-proxy-config
      mountPath: /etc/ferro-proxy
      readOnly: true
    - name: ferro-proxy-tmp
      mountPath: /tmp
  startupProbe:
    httpGet: {path: /ready, port: ferro-admin}
    periodSeconds: 1
    failureThreshold: 30
    timeoutSeconds: 2
  readinessProbe:
    httpGet: {path: /ready, port: ferro-admin}
    periodSeconds: 5
    failureThreshold: 2
    timeoutSeconds: 2
  livenessProbe:
    httpGet: {path: /health, port: ferro-admin}
    periodSeconds: 10
    failureThreshold: 3
    timeoutSeconds: 2
  resources:
    {{- toYaml (.resources | default (dict "requests" (dict "cpu" "50m" "memory" "64Mi") "limits" (dict "cpu" "1" "memory" "256Mi"))) | nindent 4 }}
  securityContext:
    {{- include "ferro-proxy.securityContext" . | nindent 4 }}
{{- end -}}

{{- define "ferro-proxy.sidecarVolumes" -}}
- name: ferro-proxy-config
  configMap:
    name: {{ .configMap | default "ferro-proxy-config" }}
- name: ferro-proxy-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{/* Environment for app containers: point SDKs at the sidecar. Call with a dict {proxyPort}. */}}
{{- define "ferro-proxy.appEnv" -}}
- name: OPENAI_BASE_URL
  value: {{ printf "http://127.0.0.1:%v/v1" (.proxyPort | default 8080) | quote }}
- name: ANTHROPIC_BASE_URL
  value: {{ printf "http://127.0.0.1:%v" (.proxyPort | default 8080) | quote }}
{{- end -}}

{{/* The sidecar settings of this release, as the dict the templates above take. */}}
{{- define "ferro-proxy.sidecarArgs" -}}
{{- $s := .Values.sidecar -}}
{{- toYaml (dict "image" (include "ferro-proxy.image" .) "configMap" (include "ferro-proxy.configMapName" .) "secret" (include "ferro-proxy.secretName" .) "proxyPort" $s.proxyPort "adminPort" $s.adminPort "native" $s.nativeSidecar "drainSeconds" $s.drainSeconds "logLevel" $s.logLevel "resources" $s.resources "runAsUser" $s.runAsUser) -}}
{{- end -}}
