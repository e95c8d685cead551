#!/usr/bin/python
"""Ansible module: certificates of the cluster CA (common/pki.py), each made only when missing
or no longer right (another role, other addresses, signed by another CA, expiring within 30
days): a second run changes nothing. The CA itself is made on first use. Runs on the control
host with the python that has Serpens (ansible_playbook_python: the project's venv). Returns
`pem`: {file: {"crt": ..., "key": ...}} for the certs asked for, and `ca`: the CA's certificate
(PEM), for serpens_files to put on a host in one call."""
from __future__ import annotations

DOCUMENTATION = r"""
module: serpens_cert
short_description: Issue a certificate of the Serpens cluster CA, idempotently
options:
  ca_dir: {description: the CA's directory (ca.crt, ca.key; made if absent), required: true, type: path}
  certs:
    description: the certificates, each {file, role (O, one of common/pki.py ROLES)}; its CN and file name are file-suffix (file without a suffix)
    type: list
    elements: dict
    default: []
  suffix: {description: appended to each name (the host's), type: str, default: ""}
  hosts: {description: every certificate's subject alternative names, type: list, elements: str, default: []}
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
        "certs": {"type": "list", "elements": "dict", "default": []},
        "suffix": {"type": "str", "default": ""},
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
        module.fail_json(msg=f"serpens is not importable by this python ({e}): run "
                             "ansible-playbook from the project's venv")
    for i, c in enumerate(p["certs"]):
        if not isinstance(c.get("file"), str) or c.get("role") not in ROLES:
            module.fail_json(msg=f"certs[{i}]: a file and a role (one of {', '.join(ROLES)}), "
                                 f"got {c!r}")
    changed = False
    if not os.path.exists(os.path.join(p["ca_dir"], "ca.crt")):
        if module.check_mode:
            module.exit_json(changed=True)
        CA.create(p["ca_dir"])
        changed = True
    ca = CA(p["ca_dir"])
    pem = {}
    hosts = list(dict.fromkeys(p["hosts"]))
    for c in p["certs"]:
        name = f"{c['file']}-{p['suffix']}" if p["suffix"] else c["file"]
        cert = os.path.join(p["ca_dir"], f"{name}.crt")
        if not _current(cert, ca, c["role"], hosts):
            changed = True
            if module.check_mode:
                continue
            ca.issue(name, c["role"], hosts)
        pem[c["file"]] = {kind: _text(os.path.join(p["ca_dir"], f"{name}.{kind}"))
                          for kind in ("crt", "key")}
    module.exit_json(changed=changed, ca=_text(ca.cert_path), pem=pem)


def _text(path: str) -> str:
    with open(path) as f:
        return f.read()


if __name__ == "__main__":
    main()
