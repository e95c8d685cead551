#!/usr/bin/env bash
# Idempotent setup of a Debian 12 machine for Serpens (run as root): Debian packages,
# hugepages, and the project in .venv/. A second run with nothing changed takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(dpdk dpdk-dev libdpdk-dev build-essential pkg-config python3-venv python3-dev
              libpcap-dev libnuma-dev etcd-server etcd-client redis-server iproute2
              openssh-server)   # openssh-server: deploy/testbed.sh's namespace hosts
HUGEPAGES_2M=${SERPENS_HUGEPAGES:-1024}   # 2 GiB of 2 MiB pages (at least 1 GiB is required)

log() { printf '[setup] %s\n' "$*"; }

install_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

setup_hugepages() {
  local have
  have=$(cat /proc/sys/vm/nr_hugepages)
  if ((have < HUGEPAGES_2M)); then
    echo "$HUGEPAGES_2M" > /proc/sys/vm/nr_hugepages
    have=$(cat /proc/sys/vm/nr_hugepages)
    ((have >= 512)) || { echo "only $have hugepages could be reserved; need 512 (1 GiB)" >&2; exit 1; }
  fi
  mkdir -p /dev/hugepages
  mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages
}

build_inputs_hash() {
  # Sources only: the build writes runtime_cy/_*.c, which must not change the hash.
  { cat pyproject.toml setup.py
    find runtime_cy \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -path '*/src/*' \
         -o -path '*/include/*' -o -path '*/nf_support/*' \) -type f | sort | xargs cat
    find router gateway bench/native -type f \( -name '*.c' -o -name '*.h' -o -name '*.pxd' \
         -o -name '*.pxi' \) | sort | xargs cat; } | sha256sum | cut -d' ' -f1
}

setup_venv() {
  [ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
  local stamp=.venv/.serpens-build hash
  hash=$(build_inputs_hash)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ] && .venv/bin/python -c 'import serpens.runtime_cy._dataplane, serpens.runtime_cy._image' 2>/dev/null; then
    return
  fi
  log "building the project into .venv (log: .venv/build.log)"
  if ! { .venv/bin/pip install -q --upgrade pip setuptools wheel 'cython>=3.0' &&
         .venv/bin/pip install -q --no-build-isolation -e '.[test,deploy]'; } > .venv/build.log 2>&1; then
    tail -40 .venv/build.log >&2
    exit 1
  fi
  echo "$hash" > "$stamp"
}

install_packages
setup_hugepages
setup_venv
log "ready"
