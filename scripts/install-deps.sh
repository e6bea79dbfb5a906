#!/usr/bin/env bash
# Install what graygate's tests, demo and chart checks need, when missing. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Helm (Go SDK) and Kubernetes schemas for the chart checks.
if ! python3 -c "import helm_python, kubernetes_validate, yaml" >/dev/null 2>&1; then
  echo "installing Python packages for the chart checks"
  python3 -m pip install --quiet --disable-pip-version-check -r scripts/chart/requirements.txt
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
