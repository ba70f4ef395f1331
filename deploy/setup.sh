#!/usr/bin/env bash
# Set up FoldAtlas in ./.venv (idempotent): system tools, then the package with its test extras.
# torch is pinned by constraints.txt to the CPU wheel (an unpinned torch pulls GBs of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

apt_pkgs=()
command -v gemmi >/dev/null 2>&1 || apt_pkgs+=(gemmi)       # `gemmi validate` (mmCIF dictionary checks)
command -v mmseqs >/dev/null 2>&1 || apt_pkgs+=(mmseqs2)    # MSA search backend
command -v jackhmmer >/dev/null 2>&1 || apt_pkgs+=(hmmer)   # reference jackhmmer (benchmark, tests)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
  else
    echo "note: not root or no apt-get; optional tools not installed: ${apt_pkgs[*]}" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_args=(-q -c constraints.txt)
[ -d /opt/wheels ] && pip_args+=(--find-links /opt/wheels)
.venv/bin/python -m pip install "${pip_args[@]}" "torch==2.13.0"
.venv/bin/python -m pip install "${pip_args[@]}" -e ".[test]"
echo "FoldAtlas installed in .venv ($(.venv/bin/foldatlas --help >/dev/null && echo ok))"
