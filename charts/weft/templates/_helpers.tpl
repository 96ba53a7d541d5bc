{{- define "weft.labels" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: weft
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "weft.selectorLabels" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "weft.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "weft.proxyImage" -}}
{{ .Values.proxy.image.repository }}:{{ .Values.proxy.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "weft.webhookSecret" -}}
{{ .Values.webhook.existingSecret | default "weft-webhook-tls" }}
{{- end -}}

{{- define "weft.identitySecret" -}}
{{ .Values.identity.existingSecret | default "weft-identity" }}
{{- end -}}


{{- /* Leader election: always with more than one replica. */ -}}
{{- define "weft.leaderElection" -}}
{{- if or .Values.operator.leaderElection (gt (int .Values.operator.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{- /* The PodDisruptionBudget's API: policy/v1 where the API server serves it (1.21 and later),
       policy/v1beta1 on 1.20. Installing against a cluster, Helm knows the served kinds; when
       rendering offline it knows only group/versions, so the Kubernetes version decides
       (`--kube-version`). */ -}}
{{- define "weft.pdbApiVersion" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget" -}}
policy/v1
{{- else if .Capabilities.APIVersions.Has "policy/v1beta1/PodDisruptionBudget" -}}
policy/v1beta1
{{- else if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{- /* Namespaces the injector never sees: the system ones, excludeNamespaces and the release
       namespace, matched on kubernetes.io/metadata.name (set by Kubernetes 1.21 and later). */ -}}
{{- define "weft.injectorExcludedNamespaces" -}}
{{- $names := concat .Values.injector.excludeNamespaces (list .Release.Namespace) | uniq -}}
- {key: kubernetes.io/metadata.name, operator: NotIn, values: [{{ join ", " $names }}]}
{{- end -}}
