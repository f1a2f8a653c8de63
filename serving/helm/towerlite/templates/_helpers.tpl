{{- define "towerlite.name" -}}
{{- printf "%s-towerlite" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "towerlite.labels" -}}
app.kubernetes.io/name: towerlite
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "towerlite.selector" -}}
app.kubernetes.io/name: towerlite
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "towerlite.repositoryPath" -}}
{{- if .Values.repository.uri -}}{{ .Values.repository.uri }}{{- else -}}/models{{- end -}}
{{- end -}}
