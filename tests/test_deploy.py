"""The systemd units of deploy/systemd (PID 1 here is not systemd, so they are checked, not
started): systemd-analyze verify finds nothing but the absent install path, and each unit
restarts on failure and gives its program the TLS files."""
import configparser
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.unit

UNITS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "deploy", "systemd")


@pytest.mark.parametrize("unit, program, cert", [
    ("serpens-controller.service", "serpens-controller", "serpens-controller"),
    ("serpens-agent.service", "serpens-agent", "serpens-agent")])
def test_unit_restarts_on_failure_with_tls_files(unit, program, cert):
    path = os.path.join(UNITS, unit)
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    service = parser["Service"]
    assert service["Restart"] == "on-failure"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    start = service["ExecStart"].replace("\\\n", " ")
    assert f"/.venv/bin/{program}" in start and "--insecure" not in start
    for flag, file in (("--ca", "ca.crt"), ("--cert", f"{cert}.crt"), ("--key", f"{cert}.key")):
        assert f"{flag} /etc/serpens/pki/{file}" in " ".join(start.split())
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True,
                           timeout=60)
        problems = [line for line in (r.stdout + r.stderr).splitlines()
                    if line and "is not executable" not in line]
        assert problems == []
