#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler from the Go module k8s.io/kubernetes
# (the wrapper module next to this script pins the version and maps every staging module to its release),
# into .cache/control-plane/<version>/bin/. The tests start them on loopback (tests/support/control_plane.py).
# Skips the build when the three binaries are there. A cold build takes minutes of every core and ~2 GB RAM;
# Go's module and build caches (~/go, ~/.cache/go-build) make a rebuild after `git clean` take seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/go.mod")"
out="$root/.cache/control-plane/$version/bin"
components=(kube-apiserver kube-controller-manager kube-scheduler)

missing=()
for c in "${components[@]}"; do
  [ -x "$out/$c" ] || missing+=("$c")
done
if ((${#missing[@]} == 0)); then
  echo "control-plane: $version present in ${out#"$root"/}"
  exit 0
fi
command -v go >/dev/null 2>&1 || { echo "control-plane: Go is needed to build ${missing[*]}" >&2; exit 1; }

mkdir -p "$out"
cd "$here"
start=$(date +%s)
for c in "${missing[@]}"; do
  echo "control-plane: building $c $version"
  # Without the version stamp the binaries report v0.0.0-master+\$Format:%H\$ and `kubectl version` fails.
  go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version" \
    -o "$out/$c.tmp" "k8s.io/kubernetes/cmd/$c"
  mv "$out/$c.tmp" "$out/$c"
done
echo "control-plane: built ${missing[*]} in $(($(date +%s) - start)) s"
