{{/* Names and labels. */}}
{{- define "enrich.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "enrich.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "enrich.selectorLabels" -}}
app.kubernetes.io/name: {{ include "enrich.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "enrich.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "enrich.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "enrich.secretName" -}}
{{- if .Values.secret.existingSecret -}}
{{- .Values.secret.existingSecret -}}
{{- else if .Values.secret.env -}}
{{- include "enrich.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* The shutdown deadline rounded up, plus the margin: the pods' terminationGracePeriodSeconds. */}}
{{- define "enrich.gracePeriod" -}}
{{- add (ceil .Values.config.shutdownDeadlineSeconds | int) .Values.shutdownGraceMarginSeconds -}}
{{- end -}}

{{/* The most consumers the input topic can use: KEDA's ceiling and the replica count's. */}}
{{- define "enrich.maxReplicas" -}}
{{- $partitions := int .Values.inputTopicPartitions -}}
{{- $max := $partitions -}}
{{- if not (kindIs "invalid" .Values.keda.maxReplicaCount) -}}
{{- $max = int .Values.keda.maxReplicaCount -}}
{{- end -}}
{{- if gt $max $partitions -}}
{{- fail (printf "keda.maxReplicaCount (%d) is above inputTopicPartitions (%d): a consumer beyond the partition count gets no partition" $max $partitions) -}}
{{- end -}}
{{- $max -}}
{{- end -}}

{{- define "enrich.image" -}}
{{- $root := .root -}}
{{- $image := .image | default dict -}}
{{- if $root.Values.gpu.enabled -}}
{{- $repository := $image.repository | default $root.Values.gpu.image.repository -}}
{{- $tag := $image.tag | default $root.Values.gpu.image.tag | default (printf "%s-gpu" $root.Chart.AppVersion) -}}
{{- printf "%s:%s" $repository $tag -}}
{{- else -}}
{{- $repository := $image.repository | default $root.Values.image.repository -}}
{{- $tag := $image.tag | default $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The pod spec the Deployment and the replay Job share: image, settings, model, security, GPU.
Called with (dict "root" $ "container" DICT "image" DICT "resources" DICT "subPath" STRING).
*/}}
{{- define "enrich.podSpec" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
{{- with $values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml $values.podSecurityContext | nindent 2 }}
{{- with $values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- if and $values.gpu.enabled $values.gpu.runtimeClassName }}
runtimeClassName: {{ $values.gpu.runtimeClassName }}
{{- end }}
{{- $nodeSelector := $values.nodeSelector -}}
{{- $tolerations := $values.tolerations -}}
{{- if $values.gpu.enabled -}}
{{- $nodeSelector = merge (deepCopy $values.nodeSelector) $values.gpu.nodeSelector -}}
{{- $tolerations = concat $values.tolerations $values.gpu.tolerations -}}
{{- end }}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: {{ .container.name }}
    image: {{ include "enrich.image" (dict "root" $root "image" .image) | quote }}
    imagePullPolicy: {{ $values.image.pullPolicy }}
    {{- with .container.command }}
    command:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .container.args }}
    args:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    envFrom:
      - configMapRef:
          name: {{ include "enrich.fullname" $root }}
      {{- with include "enrich.secretName" $root }}
      - secretRef:
          name: {{ . }}
      {{- end }}
    {{- with .container.ports }}
    ports:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .container.probes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- $resources := deepCopy .resources -}}
    {{- if $values.gpu.enabled -}}
    {{- $limits := $resources.limits | default dict -}}
    {{- $_ := set $limits "nvidia.com/gpu" (int $values.gpu.count) -}}
    {{- $_ := set $resources "limits" $limits -}}
    {{- end }}
    {{- with $resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- toYaml $values.securityContext | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      {{- if $values.model.volume }}
      - name: model
        mountPath: {{ $values.model.dir }}
        readOnly: true
        {{- with .subPath }}
        subPath: {{ . }}
        {{- end }}
      {{- end }}
volumes:
  - name: tmp
    emptyDir: {}
  {{- with $values.model.volume }}
  - name: model
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
