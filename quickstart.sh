#!/usr/bin/env bash
# ./quickstart.sh        set up this machine and run the main job: a local cluster (etcd, a
#                        controller, an agent) running FW -> MON -> NAT over traffic
# ./quickstart.sh test   set up this machine and run the tests
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
case "${1:-run}" in
  run)  exec .venv/bin/serpens up ;;
  test) exec .venv/bin/python -m pytest -q tests ;;
  *)    echo "usage: $0 [run|test]" >&2; exit 2 ;;
esac
