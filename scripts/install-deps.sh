#!/usr/bin/env bash
# Install what graygate's tests, demo and chart checks need, when missing. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
# etcd for the real control plane (kube-apiserver v1.36 works with Debian's 3.4).
[ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "${KUBEBUILDER_ASSETS}/etcd" ] || command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v xz >/dev/null 2>&1 || need_apt+=(xz-utils)
# Headless Chromium reads the dashboard in its end-to-end test (chromium-driver for WebDriver users).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium chromium-driver fonts-dejavu-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# kube-apiserver and kube-controller-manager from ../shared/k8s, unpacked once into target/k8s/bin
# and checked against the sums its README gives (skipped when KUBEBUILDER_ASSETS provides them).
unpack_k8s() {
  local name=$1 sum=$2 src="../shared/k8s/$1-v1.36.2-linux-amd64.xz" dst="target/k8s/bin/$1"
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "${KUBEBUILDER_ASSETS}/$name" ]; then return; fi
  if [ -x "$dst" ] && echo "$sum  $dst" | sha256sum -c --status; then return; fi
  if [ ! -f "$src" ]; then
    echo "warning: $src not found; the real control-plane tests will fail (clone the project beside shared/)" >&2
    return
  fi
  mkdir -p target/k8s/bin
  xz -dc "$src" > "$dst.tmp"
  echo "$sum  $dst.tmp" | sha256sum -c --status || { echo "error: $src does not match its sha256" >&2; rm -f "$dst.tmp"; exit 1; }
  chmod +x "$dst.tmp"
  mv "$dst.tmp" "$dst"
  echo "unpacked $dst"
}
unpack_k8s kube-apiserver 65e5cd8179f89cd2f19a405c15078a9d913cd2d015f12214e4118c62b6dcc9ca
unpack_k8s kube-controller-manager 165b00639310a85b63eb729981630a213b1eebaa26c2adf957dc3d7ef7dc9e79

# Helm (Go SDK) and Kubernetes schemas for the chart checks.
if ! python3 -c "import helm_python, kubernetes_validate, yaml" >/dev/null 2>&1; then
  echo "installing Python packages for the chart checks"
  python3 -m pip install --quiet --disable-pip-version-check -r scripts/chart/requirements.txt
fi

# The reference log parsers beside graygate's miner in tests/loghub.rs (evaluation only).
if ! python3 -c "import logparser.Brain, logparser.Drain, drain3" >/dev/null 2>&1; then
  echo "installing the reference log parsers for the loghub evaluation"
  python3 -m pip install --quiet --disable-pip-version-check -r scripts/logparsers/requirements.txt
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
