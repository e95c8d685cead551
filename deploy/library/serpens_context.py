#!/usr/bin/python
"""Ansible module: a context in serpensctl's config file (cli/config.py), written only when
it differs; state=absent removes it (and the file, if nothing else is left in it)."""
from __future__ import annotations

DOCUMENTATION = r"""
module: serpens_context
short_description: A serpensctl context for a deployed Serpens cluster
options:
  path: {description: serpensctl's config file, required: true, type: path}
  name: {description: the context's name, required: true, type: str}
  server: {description: the controller's address (HOST:PORT), type: str}
  ca: {description: the cluster CA's certificate, type: path}
  cert: {description: the client certificate, type: path}
  key: {description: its key, type: path}
  current: {description: make it the current context, type: bool, default: true}
  state: {description: present or absent, type: str, default: present, choices: [present, absent]}
"""

import os

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={
        "path": {"type": "path", "required": True},
        "name": {"type": "str", "required": True},
        "server": {"type": "str"},
        "ca": {"type": "path"}, "cert": {"type": "path"}, "key": {"type": "path"},
        "current": {"type": "bool", "default": True},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
    }, required_if=[("state", "present", ("server", "ca", "cert", "key"))],
        supports_check_mode=True)
    p = module.params
    try:
        from serpens.cli import config
    except ImportError as e:
        module.fail_json(msg=f"serpens is not importable ({e}): run ansible-playbook from "
                             "the project's venv")
    try:
        doc = config.load(p["path"])
    except config.ConfigError as e:
        module.fail_json(msg=str(e))
    others = [c for c in doc["contexts"] if c.get("name") != p["name"]]
    if p["state"] == "absent":
        if len(others) == len(doc["contexts"]):
            module.exit_json(changed=False)
        if not module.check_mode:
            if others:
                doc["contexts"] = others
                if doc.get("current-context") == p["name"]:
                    doc.pop("current-context")
                config.save(p["path"], doc)
            else:
                os.unlink(p["path"])
        module.exit_json(changed=True)
    wanted = {k: p[k] for k in ("name", "server", "ca", "cert", "key")}
    have = next((c for c in doc["contexts"] if c.get("name") == p["name"]), None)
    current_ok = not p["current"] or doc.get("current-context") == p["name"]
    if have == wanted and current_ok:
        module.exit_json(changed=False, path=p["path"])
    if not module.check_mode:
        config.set_context(p["path"], wanted, make_current=p["current"])
    module.exit_json(changed=True, path=p["path"])


if __name__ == "__main__":
    main()
