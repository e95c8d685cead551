#!/usr/bin/python
"""Ansible module: a host's PKI directory in one call: the CA's certificate (0644) and each
component's certificate and key (0600, owned by the user that component runs as), each file
written only when its content, mode or owner differs (atomically: a temporary file renamed
over it). One call per host instead of one `copy` per file (the certs role)."""
from __future__ import annotations

DOCUMENTATION = r"""
module: serpens_pki
short_description: Write a host's Serpens certificates and keys, idempotently
options:
  dir: {description: the host's PKI directory (it exists), required: true, type: path}
  ca: {description: the CA's certificate (PEM), required: true, type: str}
  pem: {description: "{file: {crt: PEM, key: PEM}}: <file>.crt and <file>.key", required: true, type: dict}
  owners: {description: "{file: user} (default root)", type: dict, default: {}}
"""

import os
import pwd

from ansible.module_utils.basic import AnsibleModule


def _write(path: str, content: bytes, mode: int, uid: int, check: bool) -> bool:
    """True if the file was (or, in check mode, would be) changed."""
    try:
        with open(path, "rb") as f:
            same = f.read() == content
        st = os.stat(path)
        if same and (st.st_mode & 0o7777) == mode and st.st_uid == uid:
            return False
    except FileNotFoundError:
        pass
    if not check:
        tmp = f"{path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chown(tmp, uid, -1)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    return True


def main():
    module = AnsibleModule(argument_spec={
        "dir": {"type": "path", "required": True},
        "ca": {"type": "str", "required": True},
        "pem": {"type": "dict", "required": True, "no_log": True},
        "owners": {"type": "dict", "default": {}},
    }, supports_check_mode=True)
    p, check = module.params, module.check_mode
    written = []
    if _write(os.path.join(p["dir"], "ca.crt"), p["ca"].encode(), 0o644, 0, check):
        written.append("ca.crt")
    for file, pair in sorted(p["pem"].items()):
        owner = p["owners"].get(file, "root")
        try:
            uid = pwd.getpwnam(owner).pw_uid
        except KeyError:
            module.fail_json(msg=f"owners.{file}: no user {owner!r} on this host")
        for ext in ("crt", "key"):
            if _write(os.path.join(p["dir"], f"{file}.{ext}"), pair[ext].encode(), 0o600, uid,
                      check):
                written.append(f"{file}.{ext}")
    module.exit_json(changed=bool(written), written=written)


if __name__ == "__main__":
    main()
