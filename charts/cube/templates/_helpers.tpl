{{/*
Shared pieces of the Cube chart.

Invariants kept here, relied on by every template (and checked by tests/chart):
- Names: <fullname>-<component>; selector labels are name, instance and component only, so the
  other labels (chart version) can change without orphaning pods.
- Settings reach the services as CUBE_<SVC>_<FIELD> variables: a per-component ConfigMap for
  plain values ("cube.settingsData"), inline env only for values Kubernetes computes per pod
  (the downward API, $(POD_IP) expansion). A user setting that collides with one the chart
  manages fails the render instead of silently losing.
- TLS material is only ever mounted from Secrets with mode 0400; non-root containers get a
  private copy made by "cube.tlsInit" (see values.yaml, nonRoot).
*/}}

{{- define "cube.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cube.fullname" -}}
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

{{/* <fullname>-<component>; dict "root" $ "component" "master" */}}
{{- define "cube.componentName" -}}
{{- printf "%s-%s" (include "cube.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cube.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* dict "root" $ "component" "api" */}}
{{- define "cube.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cube.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cube.labels" -}}
helm.sh/chart: {{ include "cube.chart" .root }}
{{ include "cube.selectorLabels" . }}
app.kubernetes.io/part-of: cube
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Pod template labels: the standard ones plus global.podLabels. */}}
{{- define "cube.podLabels" -}}
{{ include "cube.labels" . }}
{{- with .root.Values.global.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
A pod's annotations: its component's own, then global.podAnnotations, then (with
metrics.prometheusAnnotations) Prometheus' scrape annotations for its metrics port; a key set
earlier wins. dict "root" $ "own" .Values.api.podAnnotations "metricsPort" .Values.metrics.ports.api
*/}}
{{- define "cube.podAnnotations" -}}
{{- $ann := merge (deepCopy .own) .root.Values.global.podAnnotations -}}
{{- if .root.Values.metrics.prometheusAnnotations -}}
{{- $ann = merge $ann (dict "prometheus.io/scrape" "true" "prometheus.io/port" (toString (int .metricsPort)) "prometheus.io/path" "/metrics") -}}
{{- end -}}
{{- with $ann }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{- define "cube.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cube.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image of a component: dict "root" $ "image" .Values.api.image (fields override the global). */}}
{{- define "cube.image" -}}
{{- $img := merge (deepCopy (default dict .image)) .root.Values.image -}}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag | toString) -}}
{{- end -}}

{{- define "cube.imagePullPolicy" -}}
{{- $img := merge (deepCopy (default dict .image)) .root.Values.image -}}
{{- $img.pullPolicy -}}
{{- end -}}

{{/* The Secret holding a role's certificate: dict "root" $ "role" "master" */}}
{{- define "cube.tlsSecret" -}}
{{- $named := get .root.Values.tls.secrets .role -}}
{{- if $named -}}
{{- $named -}}
{{- else -}}
{{- printf "%s-%s-tls" (include "cube.fullname" .root) .role -}}
{{- end -}}
{{- end -}}

{{/* Where a role's Secret is mounted (read-only, 0400) and where its private copy lives. */}}
{{- define "cube.secretDir" -}}/etc/cube/secrets/{{ . }}{{- end -}}
{{- define "cube.tlsDir" -}}/etc/cube/tls/{{ . }}{{- end -}}

{{/* A settings value as the services' loader reads it: lists comma-separated, whole numbers
without the float formatting Helm's JSON numbers would give them (1e+06). */}}
{{- define "cube.settingValue" -}}
{{- if kindIs "slice" . -}}
{{- $items := list -}}
{{- range . -}}{{- $items = append $items (include "cube.settingValue" .) -}}{{- end -}}
{{- join "," $items -}}
{{- else if kindIs "float64" . -}}
{{- if eq . (floor .) -}}{{- int64 . -}}{{- else -}}{{- . -}}{{- end -}}
{{- else if kindIs "invalid" . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/*
A component's ConfigMap data: the chart's settings (managed, already CUBE_* names) plus the
user's `settings` map (field names, turned into <prefix><FIELD>). "reserved" names the variables
the chart sets inline (per pod), which the user may not set either.
dict "where" "master.settings" "prefix" "CUBE_MASTER_" "managed" (dict ...) "settings" .Values.master.settings "reserved" (list ...)
*/}}
{{- define "cube.settingsData" -}}
{{- $out := dict -}}
{{- range $k, $v := .managed -}}
{{- $_ := set $out $k (include "cube.settingValue" $v) -}}
{{- end -}}
{{- range $field, $v := (default dict .settings) -}}
{{- $name := printf "%s%s" $.prefix (upper $field) -}}
{{- if or (hasKey $.managed $name) (has $name (default list $.reserved)) -}}
{{- fail (printf "%s.%s: the chart sets %s itself (see values.yaml)" $.where $field $name) -}}
{{- end -}}
{{- $_ := set $out $name (include "cube.settingValue" $v) -}}
{{- end -}}
{{- $lines := list -}}
{{- range $k, $v := $out -}}
{{- $lines = append $lines (printf "%s: %s" $k (quote $v)) -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end -}}

{{/* etcd endpoints (host:port, comma-separated): the chart's members, or the external list. */}}
{{- define "cube.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $fullname := include "cube.componentName" (dict "root" . "component" "etcd") -}}
{{- $peer := include "cube.componentName" (dict "root" . "component" "etcd-peer") -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $eps = append $eps (printf "%s-%d.%s.%s.svc.%s:%d" $fullname $i $peer $.Release.Namespace $.Values.clusterDomain (int $.Values.etcd.clientPort)) -}}
{{- end -}}
{{- join "," $eps -}}
{{- else -}}
{{- if not .Values.externalEtcd.endpoints -}}
{{- fail "etcd.enabled=false needs externalEtcd.endpoints (host:port list)" -}}
{{- end -}}
{{- join "," .Values.externalEtcd.endpoints -}}
{{- end -}}
{{- end -}}

{{- define "cube.masterAddr" -}}
{{- printf "%s.%s.svc.%s:%d" (include "cube.componentName" (dict "root" . "component" "master")) .Release.Namespace .Values.clusterDomain (int .Values.master.port) -}}
{{- end -}}

{{/* cube-api's Service (plain HTTP): where the edge proxies send api.<domain>/volumecontent/... */}}
{{- define "cube.apiAddr" -}}
{{- printf "%s.%s.svc.%s:%d" (include "cube.componentName" (dict "root" . "component" "api")) .Release.Namespace .Values.clusterDomain (int .Values.api.service.port) -}}
{{- end -}}

{{- define "cube.apiHost" -}}
{{- default (printf "api.%s" .Values.domain) .Values.api.ingress.host -}}
{{- end -}}

{{/* Downward-API variables that inline settings expand with $(NAME). */}}
{{- define "cube.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- end -}}

{{/* Security context of a non-root Cube container. */}}
{{- define "cube.nonRootContainer" -}}
runAsNonRoot: true
runAsUser: {{ int .Values.nonRoot.uid }}
runAsGroup: {{ int .Values.nonRoot.gid }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The init container that gives a non-root container its TLS directories: each role's Secret
(mounted 0400, owned by root) is copied into the memory volume "tls" as <tlsDir>/<role>, owned by
nonRoot.uid, the key 0600 and the certificates 0644 (deploy/docker-entrypoint.sh install-tls).
It runs as root only to read those files and hand them over: CHOWN and FOWNER, nothing else.
dict "root" $ "image" .Values.api.image "roles" (list "api") "extra" (list "SRC" "DST")
*/}}
{{- define "cube.tlsInit" -}}
- name: tls-init
  image: {{ include "cube.image" (dict "root" .root "image" .image) }}
  imagePullPolicy: {{ include "cube.imagePullPolicy" (dict "root" .root "image" .image) }}
  args:
    - install-tls
    - "{{ int .root.Values.nonRoot.uid }}:{{ int .root.Values.nonRoot.gid }}"
    {{- range .roles }}
    - {{ include "cube.secretDir" . }}
    - {{ include "cube.tlsDir" . }}
    {{- end }}
    {{- range (default list .extra) }}
    - {{ . }}
    {{- end }}
  securityContext:
    runAsUser: 0
    runAsGroup: 0
    runAsNonRoot: false
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
      add: ["CHOWN", "FOWNER"]
    seccompProfile:
      type: RuntimeDefault
  resources:
    {{- toYaml .root.Values.tlsInit.resources | nindent 4 }}
  volumeMounts:
    - name: tls
      mountPath: /etc/cube/tls
    {{- range .roles }}
    - name: secret-{{ . }}
      mountPath: {{ include "cube.secretDir" . }}
      readOnly: true
    {{- end }}
    {{- with .extraMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* Secret volumes (0400) for roles: dict "root" $ "roles" (list ...) "prefix" "secret-" */}}
{{- define "cube.secretVolumes" -}}
{{- $root := .root -}}
{{- $prefix := default "secret-" .prefix -}}
{{- range .roles }}
- name: {{ $prefix }}{{ . }}
  secret:
    secretName: {{ include "cube.tlsSecret" (dict "root" $root "role" .) }}
    defaultMode: 0400
{{- end }}
{{- end -}}

{{/* Private copies of the TLS directories: memory only, never on the node's disk. */}}
{{- define "cube.tlsVolume" -}}
- name: tls
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end -}}

{{/* Soft anti-affinity: spread a component's replicas over nodes. */}}
{{- define "cube.spreadAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "cube.selectorLabels" . | nindent 12 }}
{{- end -}}
