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


def _inventory_host(inventory: str, host: str) -> dict:
    r = subprocess.run([os.path.join(BIN, "ansible-inventory"), "-i", inventory, "--host", host],
                       capture_output=True, text=True, cwd=DEPLOY, env=ENV, timeout=120,
                       check=True)
    return __import__("json").loads(r.stdout)


def _render_config(role: str, template: str, hostvars: dict, host: str) -> str:
    import json

    import yaml
    with open(os.path.join(DEPLOY, "roles", role, "defaults", "main.yml")) as f:
        defaults = yaml.safe_load(f)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(
        os.path.join(DEPLOY, "roles", role, "templates")), trim_blocks=True)
    env.filters["to_json"] = json.dumps
    names = {"serpens_node_name": host, "serpens_gateway_name": host}
    values = {**defaults, **{k: v for k, v in names.items() if k in defaults}, **hostvars,
              "serpens_nf_state_dir": "/dev/shm/serpens/state",
              "ansible_managed": "Ansible managed", "inventory_hostname": host}
    return env.get_template(template).render(**values)


@pytest.mark.parametrize("host", ["srv3", "srv4"])
def test_example_inventory_renders_valid_node_configs(host):
    """The commented real-server inventory gives each agent a Node config its parser takes."""
    from serpens.common.node_spec import parse_node
    hostvars = _inventory_host(os.path.join(DEPLOY, "inventory", "servers.example.yml"), host)
    node = parse_node(_render_config("agent", "node.yaml.j2", hostvars, host))
    assert node.name == host and node.pool == 8 and node.cpus == hostvars["serpens_cpus"]
    assert node.underlay.ip == hostvars["serpens_underlay"]["ip"]


def test_example_inventory_renders_a_valid_gateway_config():
    from serpens.gateway.config import parse_gateway
    hostvars = _inventory_host(os.path.join(DEPLOY, "inventory", "servers.example.yml"), "srv1")
    gateway = parse_gateway(_render_config("gateway", "gateway.yaml.j2", hostvars, "srv1"))
    assert gateway.name == "srv1" and gateway.egress == "out"
