#!/usr/bin/python
"""Ansible module: a certificate of the cluster CA (common/pki.py), made only when missing or
no longer right (another role, other addresses, signed by another CA, expiring within 30
days): a second run changes nothing. The CA itself is made on first use. Runs on the control
host with the python that has Serpens (ansible_playbook_python: the project's venv)."""
from __future__ import annotations

DOCUMENTATION = r"""
module: serpens_cert
short_description: Issue a certificate of the Serpens cluster CA, idempotently
options:
  ca_dir: {description: the CA's directory (ca.crt, ca.key; made if absent), required: true, type: path}
  name: {description: the certificate's CN and file name, required: true, type: str}
  role: {description: its role (O), one of common/pki.py ROLES, required: true, type: str}
  hosts: {description: subject alternative names (addresses, DNS names), type: list, elements: str, default: []}
  state: {description: present, or absent (removes the whole CA directory), type: str, default: present, choices: [present, absent]}
"""

import datetime
import os
import shutil

from ansible.module_utils.basic import AnsibleModule


def _current(path: str, ca, role: str, hosts: list[str]) -> bool:
    from cryptography import x509

    from serpens.common.pki import subject
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError:
        return False
    cert = x509.load_pem_x509_certificate(pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in sans.get_values_for_type(x509.IPAddress)} | set(
            sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        have = set()
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)
    return (subject(pem)[1] == role and have == set(hosts) and cert.issuer == ca._cert.subject
            and cert.not_valid_after_utc > soon)


def main():
    module = AnsibleModule(argument_spec={
        "ca_dir": {"type": "path", "required": True},
        "name": {"type": "str", "required": True},
        "role": {"type": "str", "required": True},
        "hosts": {"type": "list", "elements": "str", "default": []},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
    }, supports_check_mode=True)
    p = module.params
    if p["state"] == "absent":
        exists = os.path.isdir(p["ca_dir"])
        if exists and not module.check_mode:
            shutil.rmtree(p["ca_dir"])
        module.exit_json(changed=exists)
    try:
        from serpens.common.pki import CA, ROLES
    except ImportError as e:
        module.fail_json(msg=f"serpens is not importable by {module._name}'s python ({e}): "
                             "run ansible-playbook from the project's venv")
    if p["role"] not in ROLES:
        module.fail_json(msg=f"role: one of {', '.join(ROLES)}, got {p['role']!r}")
    hosts = list(dict.fromkeys(p["hosts"]))
    changed = False
    if not os.path.exists(os.path.join(p["ca_dir"], "ca.crt")):
        if module.check_mode:
            module.exit_json(changed=True)
        CA.create(p["ca_dir"])
        changed = True
    ca = CA(p["ca_dir"])
    cert = os.path.join(p["ca_dir"], f"{p['name']}.crt")
    if not _current(cert, ca, p["role"], hosts):
        if not module.check_mode:
            ca.issue(p["name"], p["role"], hosts)
        changed = True
    module.exit_json(changed=changed, ca=ca.cert_path, cert=cert,
                     key=os.path.join(p["ca_dir"], f"{p['name']}.key"))


if __name__ == "__main__":
    main()
