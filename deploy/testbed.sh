#!/usr/bin/env bash
# The namespace testbed of deploy/inventory/testbed.yml (run as root, after scripts/setup.sh):
#   deploy/testbed.sh up [--dir DIR]      hosts n1..n3 with sshd, site.yml over SSH, an SFC
#   deploy/testbed.sh play site.yml       run a playbook against it again
#   deploy/testbed.sh down [--dir DIR]    teardown.yml, then the sshds, namespaces, bridges
# deploy/testbed.py says what each does.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$root/.venv/bin/ansible-playbook" ] || { echo "testbed: run scripts/setup.sh first" >&2; exit 2; }
exec "$root/.venv/bin/python" "$root/deploy/testbed.py" "$@"
