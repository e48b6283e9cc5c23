{{/* Names and labels shared by every template. */}}

{{- define "remora.fullname" -}}
{{- if contains "remora" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-remora" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "remora.operator.name" -}}{{ include "remora.fullname" . }}-operator{{- end -}}
{{- define "remora.webhook.name" -}}{{ include "remora.fullname" . }}-webhook{{- end -}}
{{- define "remora.webhook.tlsSecret" -}}{{ include "remora.fullname" . }}-webhook-tls{{- end -}}

{{- define "remora.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: remora
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include with (list $ "operator"). */}}
{{- define "remora.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: remora-{{ index . 1 }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
{{- end -}}

{{/* An image reference: include with (list $ .Values.images.operator). */}}
{{- define "remora.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{- define "remora.operator.leaderElection" -}}
{{- $le := .Values.operator.leaderElection -}}
{{- if eq (toString $le) "auto" -}}
{{- gt (int .Values.operator.replicas) 1 -}}
{{- else -}}
{{- $le -}}
{{- end -}}
{{- end -}}

{{/*
The security context of the operator and the webhook: non-root, read-only root
filesystem, no capabilities, no privilege escalation, the runtime's default
seccomp profile. 65532 is the "nonroot" user of the distroless base image.
*/}}
{{- define "remora.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "remora.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The namespaces the webhook is never called for: the system namespaces (as
webhook/src/decision.rs SYSTEM_NAMESPACES), the release namespace (the mesh
namespace) and .Values.excludedNamespaces.
*/}}
{{- define "remora.excludedNamespaces" -}}
{{- $ns := list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace -}}
{{- range .Values.excludedNamespaces -}}
{{- $ns = append $ns . -}}
{{- end -}}
{{- toJson (uniq $ns) -}}
{{- end -}}
