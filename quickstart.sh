#!/usr/bin/env bash
# ./quickstart.sh        set up this machine and run the main job: a local cluster (etcd, a
#                        controller, a gateway and 2 servers in network namespaces) running
#                        FW -> MON -> NAT over traffic, spread over both servers via VXLAN
# ./quickstart.sh test   set up this machine and run the tests
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
case "${1:-run}" in
  run)  exec .venv/bin/serpens up --servers 2 ;;
  test) exec .venv/bin/python -m pytest -q tests ;;
  *)    echo "usage: $0 [run|test]" >&2; exit 2 ;;
esac
