"""serpensctl's config file: named contexts (a controller's address and the credentials to
call it), kubeconfig-style, and the current one.

The file is $SERPENS_CONFIG or ~/.serpens/config (mode 0600), YAML:

    apiVersion: serpens/v1
    kind: Config
    current-context: local
    contexts:
    - name: local                     # written by `serpens up`
      server: 127.0.0.1:50051         # the controller's gRPC address
      ca: /run/serpens/local/pki/ca.crt
      cert: /run/serpens/local/pki/admin.crt
      key: /run/serpens/local/pki/admin.key
    - name: dev
      server: 127.0.0.1:50051
      insecure: true                  # plain text (a controller run with --insecure)

`serpensctl [--context NAME] [--server ADDR] [--insecure] ...`: the context named (default the
current one) gives the address and credentials; --server overrides its address; --insecure
needs no context at all. Relative certificate paths are taken from the file's directory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import yaml

from serpens.common.pki import Identity, write_private


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    """Where and how to call a controller."""
    server: str
    identity: Identity | None      # None: plain text

    def channel(self):
        """A blocking grpc.Channel to the controller."""
        import grpc

        from serpens.common.rpc import MESSAGE_OPTIONS, channel_credentials
        if self.identity is None:
            return grpc.insecure_channel(self.server, options=MESSAGE_OPTIONS)
        return grpc.secure_channel(self.server, channel_credentials(self.identity),
                                   options=MESSAGE_OPTIONS)


def default_path() -> str:
    return os.environ.get("SERPENS_CONFIG") or os.path.expanduser("~/.serpens/config")


CONFIG_CHARS = 1 << 20   # far above any config of contexts; a file past it is not one


def load(path: str) -> dict:
    """The config as a dict (an empty one when the file does not exist)."""
    try:
        with open(path) as f:
            text = f.read(CONFIG_CHARS + 1)
        if len(text) > CONFIG_CHARS:
            raise ConfigError(f"{path}: over {CONFIG_CHARS} characters: not a serpens Config")
        doc = yaml.safe_load(text) or {}
    except FileNotFoundError:
        return {"apiVersion": "serpens/v1", "kind": "Config", "contexts": []}
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    contexts = doc.get("contexts", []) if isinstance(doc, dict) else None
    if not isinstance(contexts, list) or not all(isinstance(c, dict) for c in contexts):
        raise ConfigError(f"{path}: not a serpens Config (a mapping with a `contexts` list "
                          "of mappings)")
    doc.setdefault("contexts", [])
    return doc


def save(path: str, doc: dict) -> None:
    write_private(path, yaml.safe_dump(doc, sort_keys=False).encode())


def set_context(path: str, context: dict, make_current: bool = True) -> None:
    """Add or replace the context named context["name"] in the file at `path`."""
    doc = load(path)
    doc["contexts"] = [c for c in doc["contexts"] if c.get("name") != context["name"]]
    doc["contexts"].append(context)
    if make_current or not doc.get("current-context"):
        doc["current-context"] = context["name"]
    save(path, doc)


def resolve(path: str, context: str = "", server: str = "", insecure: bool = False) -> Target:
    """The Target the command-line flags and the config file name together."""
    if insecure:
        return Target(server or "127.0.0.1:50051", None)
    doc = load(path)
    name = context or doc.get("current-context")
    if not name:
        raise ConfigError(f"{path}: no current context (run `serpens up`, give --context, or "
                          "--insecure for a plain-text controller on loopback)")
    found = [c for c in doc["contexts"] if isinstance(c, dict) and c.get("name") == name]
    if not found:
        names = ", ".join(str(c.get("name")) for c in doc["contexts"]) or "none"
        raise ConfigError(f"--context: no context named {name!r} in {path} (it has: {names})")
    ctx = found[0]
    address = server or ctx.get("server")
    if not address:
        raise ConfigError(f"{path}: context {name!r} has no `server`")
    if ctx.get("insecure"):
        return Target(address, None)
    base = os.path.dirname(os.path.abspath(path))
    files = {}
    for field in ("ca", "cert", "key"):
        if not ctx.get(field):
            raise ConfigError(f"{path}: context {name!r} has no `{field}` (or `insecure: true`)")
        files[field] = os.path.join(base, os.path.expanduser(ctx[field]))
    return Target(address, Identity(**files))
