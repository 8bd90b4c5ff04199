{{/* The release's base name: the release name, or release-chart when it lacks the chart's name. */}}
{{- define "piko.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The headless Service: the name cluster.join resolves and the pods' DNS subdomain. */}}
{{- define "piko.nodesService" -}}
{{- printf "%s-nodes" (include "piko.fullname" .) -}}
{{- end -}}

{{/* The DNS suffix of the pods: NODES.NAMESPACE.svc.DOMAIN */}}
{{- define "piko.nodesDomain" -}}
{{- printf "%s.%s.svc.%s" (include "piko.nodesService" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "piko.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "piko.labels" -}}
{{ include "piko.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "piko.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "piko.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "piko.tokenSecret" -}}
{{- default (printf "%s-cluster-token" (include "piko.fullname" .)) .Values.cluster.token.existingSecret -}}
{{- end -}}

{{/* The admin port's probe scheme. */}}
{{- define "piko.adminScheme" -}}
{{- if .Values.tls.admin.secretName -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}
