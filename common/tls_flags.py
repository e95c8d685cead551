"""The security flags serpens-controller, serpens-agent and serpens-gateway share, and what
they mean.

    --ca FILE --cert FILE --key FILE   # mTLS everywhere: served API, calls out, etcd
    --insecure                          # plain text everywhere; serving only on loopback

One identity per process (common/pki.py): it is the server certificate of its gRPC service,
the client certificate it presents to other Serpens services, and its etcd client
certificate. `--etcd` URLs follow the mode: https:// (or no scheme) with TLS, http:// (or no
scheme) with --insecure; a scheme contradicting the mode is refused rather than guessed.
"""
from __future__ import annotations

import argparse
import os

from serpens.common.pki import Identity
from serpens.common.rpc import is_loopback


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("security (mTLS; see docs/control-plane.md, Security)")
    g.add_argument("--ca", default=os.environ.get("SERPENS_CA", ""),
                   help="the cluster CA certificate (PEM) peers are checked against "
                        "(default $SERPENS_CA)")
    g.add_argument("--cert", default=os.environ.get("SERPENS_CERT", ""),
                   help="this process's certificate (PEM; default $SERPENS_CERT)")
    g.add_argument("--key", default=os.environ.get("SERPENS_KEY", ""),
                   help="its private key (PEM; default $SERPENS_KEY)")
    g.add_argument("--insecure", action="store_true",
                   help="plain text, no authentication: only for a listen address on loopback")


def identity(ap: argparse.ArgumentParser, args) -> Identity | None:
    """The process's identity, None with --insecure; ap.error() on a contradiction."""
    given = [f for f in ("ca", "cert", "key") if getattr(args, f)]
    if args.insecure:
        if given:
            ap.error(f"--insecure: contradicts --{given[0]} (plain text has no certificates)")
        return None
    missing = [f"--{f}" for f in ("ca", "cert", "key") if f not in given]
    if missing:
        ap.error(f"{', '.join(missing)}: required for mTLS (or --insecure for plain text on "
                 "loopback)")
    for f in ("ca", "cert", "key"):
        if not os.access(getattr(args, f), os.R_OK):
            ap.error(f"--{f}: {getattr(args, f)} cannot be read")
    return Identity(args.ca, args.cert, args.key)


def etcd_endpoint(url: str, tls: bool) -> str:
    """https://host:port, http://host:port or host:port -> host:port, if the scheme fits."""
    for scheme, secure in (("https://", True), ("http://", False)):
        if url.startswith(scheme):
            if secure != tls:
                raise argparse.ArgumentTypeError(
                    f"{url}: {'TLS' if secure else 'plain text'} to etcd, but this process "
                    f"runs {'with TLS' if tls else 'with --insecure'}")
            url = url[len(scheme):]
    host, _, port = url.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{url}: expected https://HOST:PORT")
    return f"{host}:{port}"


def resolve(ap: argparse.ArgumentParser, args, listen: str) -> None:
    """A served process's flags made whole (ap.error() on a contradiction): args.identity
    (None with --insecure, which serves only on loopback) and args.etcd_endpoints from the
    comma-separated --etcd."""
    args.identity = identity(ap, args)
    if args.identity is None and not is_loopback(listen):
        ap.error(f"--insecure: plain text is served only on loopback, not on {listen}")
    try:
        args.etcd_endpoints = [etcd_endpoint(e.strip(), args.identity is not None)
                               for e in args.etcd.split(",") if e.strip()]
    except argparse.ArgumentTypeError as e:
        ap.error(f"--etcd: {e}")
