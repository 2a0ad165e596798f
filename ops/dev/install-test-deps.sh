#!/usr/bin/env bash
# Installs what the test suite runs against, besides the Python packages: Azurite (npm, pinned in
# package-lock.json, into ./node_modules), Debian's nginx and Chromium when tests need them, and checkov
# (tests/deploy/test_deployment_checks.py) in a venv of its own.
# PostgreSQL is expected at 127.0.0.1:5432 (it runs on the development and CI machines).
set -euo pipefail
cd "$(dirname "$0")/../.."

# checkov (PyPI) lints the Dockerfile, the Bicep and the rendered chart. Its own venv, not the project's: it
# brings ~60 packages (boto3, numpy, ...) and pins some below the project's (packaging 23.2). ~30 s, ~290 MB, once.
# It installs in the background while npm and apt work (they wait on the network, not on each other).
CHECKOV_VERSION=3.3.30
checkov_venv=.venv/tools/checkov
checkov_pid=""
if ! compgen -G "${checkov_venv}/lib/python3*/site-packages/checkov-${CHECKOV_VERSION}.dist-info" >/dev/null; then
  ( python3 -m venv "${checkov_venv}" &&
    "${checkov_venv}/bin/pip" install -q --disable-pip-version-check "checkov==${CHECKOV_VERSION}" ) &
  checkov_pid=$!
fi

if [ -f package.json ]; then
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
  fi
fi

export PATH="${PATH}:/usr/sbin:/sbin"  # Debian installs daemons (nginx) there; non-root PATHs lack it
need_apt=()
[ -f ops/dev/apt-packages.txt ] && while read -r pkg bin; do
  [ -z "${pkg}" ] && continue
  command -v "${bin}" >/dev/null 2>&1 || need_apt+=("${pkg}")
done < ops/dev/apt-packages.txt
if [ "${#need_apt[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ -n "${checkov_pid}" ]; then
  wait "${checkov_pid}" || { echo "error: installing checkov ${CHECKOV_VERSION} failed" >&2; exit 1; }
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
  fi
fi
