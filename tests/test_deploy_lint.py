"""deploy/ checked without running it: ansible-lint passes on every playbook (offline, the
rules of deploy/.ansible-lint; `ansible-playbook --syntax-check` where the linter is not
installed), and the systemd unit the serpens_service role renders for the controller and the
agent passes `systemd-analyze verify` and restarts on failure (PID 1 here is not systemd, so
units are checked, not started; tests/test_deploy.py runs the playbooks)."""
import glob
import os
import shlex
import shutil
import subprocess
import sys

import jinja2
import pytest

pytestmark = pytest.mark.unit

DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deploy")
BIN = os.path.dirname(sys.executable)
PLAYBOOKS = sorted(glob.glob(os.path.join(DEPLOY, "*.yml")))
ENV = {**os.environ, "ANSIBLE_CONFIG": os.path.join(DEPLOY, "ansible.cfg"), "NO_COLOR": "1"}


def test_every_playbook_is_found():
    assert [os.path.basename(p) for p in PLAYBOOKS] == ["site.yml", "teardown.yml"]


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=os.path.basename)
def test_playbook_passes_the_linter(playbook):
    lint = os.path.join(BIN, "ansible-lint")
    if os.path.exists(lint):
        argv = [lint, "--nocolor", "-f", "pep8", playbook]
    else:   # the linter is not installed: the playbook at least parses, roles and all
        argv = [os.path.join(BIN, "ansible-playbook"), "-i",
                os.path.join(DEPLOY, "inventory", "testbed.yml"), "--syntax-check", playbook]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=DEPLOY, env=ENV, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr


def _render_unit(tmp_path, name: str, argv: list[str], **settings) -> str:
    """roles/serpens_service's unit template as the role renders it for `name`."""
    loader = jinja2.FileSystemLoader(os.path.join(DEPLOY, "roles", "serpens_service",
                                                  "templates"))
    env = jinja2.Environment(loader=loader, trim_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["quote"] = shlex.quote
    text = env.get_template("unit.service.j2").render(
        ansible_managed="Ansible managed", serpens_service_name=name,
        serpens_service_description=f"{name} (test)", serpens_service_argv=argv,
        serpens_service_user=settings.get("user", "root"), serpens_service_restart_s=1,
        serpens_service_stop_timeout_s=30, serpens_service_memlock=settings.get("memlock", False))
    path = tmp_path / f"{name}.service"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name, user, memlock", [("serpens-controller", "serpens", False),
                                                 ("serpens-agent", "root", True)])
def test_unit_restarts_on_failure_with_tls_files(tmp_path, name, user, memlock):
    import configparser
    pki = "/etc/serpens/pki"
    argv = [f"/opt/serpens/.venv/bin/{name}", "--etcd", "https://10.0.0.1:2379",
            "--ca", f"{pki}/ca.crt", "--cert", f"{pki}/{name}.crt", "--key", f"{pki}/{name}.key"]
    path = _render_unit(tmp_path, name, argv, user=user, memlock=memlock)
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    service = parser["Service"]
    assert service["Restart"] == "on-failure"
    assert service["ExecStart"] == " ".join(argv)
    assert service.get("User") == (None if user == "root" else user)
    assert ("LimitMEMLOCK" in service) == memlock
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True,
                           timeout=60)
        problems = [line for line in (r.stdout + r.stderr).splitlines()
                    if line and "is not executable" not in line
                    and "No such file or directory" not in line]
        assert problems == []
