"""serpens-service-ready: wait until a (re)started service answers, or fail naming its log
(deploy/roles/serpens_service runs it after every start, so a play never reports success
while what it started keeps crashing).

    python -m serpens.cli.service_ready (--pidfile P | --unit NAME) --log L --timeout-s S
        [--fresh] (--grpc HOST:PORT | --etcd URL) --ca CA --cert CERT --key KEY

Healthy: gRPC health SERVING over mTLS (--grpc: the controller, agent and gateway serve it
once their data plane and server are up), or `etcdctl endpoint health` (--etcd). It fails at
once, with the tail of the program's log, when the program has exited since it was started:
under serpens-supervise (--pidfile) the supervisor is gone (it gave up or the program exited
0) or P.starts grew; under systemd (--unit) the unit is failed/inactive or NRestarts grew.
--fresh: the program was (re)started just now, so any restart at all is a failure. Else it
fails after --timeout-s. Exit codes: 0 healthy, 1 not (the message says why), 2 bad usage.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from serpens.cli.supervise import supervisor_pid
from serpens.common.argtypes import positive_float

# the probes' failed handshakes are expected while a program starts: not worth a line each
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

TAIL_LINES = 25


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def grpc_healthy(address: str, ca: str, cert: str, key: str, timeout: float) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from serpens.common.pki import Identity
    from serpens.common.rpc import channel_credentials
    creds = channel_credentials(Identity(ca=ca, cert=cert, key=key))
    with grpc.secure_channel(address, creds) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def etcd_healthy(url: str, ca: str, cert: str, key: str, timeout: float) -> bool:
    r = subprocess.run(["etcdctl", f"--endpoints={url}", f"--cacert={ca}", f"--cert={cert}",
                        f"--key={key}", f"--command-timeout={timeout:g}s",
                        f"--dial-timeout={timeout:g}s", "endpoint", "health"],
                       capture_output=True, text=True)
    return r.returncode == 0


class Supervised:
    """The program under serpens-supervise: is it still the run we started?"""

    def __init__(self, pidfile: str):
        self.pidfile = os.path.abspath(pidfile)

    def starts(self) -> int:
        text = _read(self.pidfile + ".starts")
        return int(text) if text.isdigit() else 0

    def exited(self, baseline: int) -> str:
        if not supervisor_pid(self.pidfile):
            return "its supervisor is gone (the program exited; it gave up after repeated failures)"
        if self.starts() > baseline:
            return "it exited and is being restarted"
        return ""

    def tail(self, log: str) -> str:
        try:
            with open(log, errors="replace") as f:
                lines = f.readlines()[-TAIL_LINES:]
        except OSError as e:
            return f"(no log: {e})"
        return "".join(lines)


class Unit:
    """The program as a systemd unit."""

    def __init__(self, name: str):
        self.name = name

    def _show(self) -> dict[str, str]:
        r = subprocess.run(["systemctl", "show", self.name, "-p", "ActiveState,NRestarts"],
                           capture_output=True, text=True)
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def starts(self) -> int:
        text = self._show().get("NRestarts", "0")
        return int(text) + 1 if text.isdigit() else 1

    def exited(self, baseline: int) -> str:
        props = self._show()
        state = props.get("ActiveState", "")
        if state in ("failed", "inactive"):
            return f"the unit is {state}"
        restarts = props.get("NRestarts", "0")
        if restarts.isdigit() and int(restarts) + 1 > baseline:
            return "it exited and is being restarted"
        return ""

    def tail(self, log: str) -> str:
        r = subprocess.run(["journalctl", "-u", self.name, "-n", str(TAIL_LINES), "--no-pager"],
                           capture_output=True, text=True)
        return r.stdout or r.stderr


def wait_ready(process, healthy, log: str, timeout: float, fresh: bool,
               poll_s: float = 0.5) -> str:
    """'' when healthy within `timeout`, else why not (with the log's tail)."""
    baseline = 1 if fresh else max(process.starts(), 1)
    deadline = time.monotonic() + timeout
    while True:
        if healthy():
            return ""
        why = process.exited(baseline)
        if not why and time.monotonic() > deadline:
            why = f"it did not answer within {timeout:g} s"
        if why:
            return f"{why}; see {log}. Its last lines:\n{process.tail(log)}"
        time.sleep(poll_s)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="serpens-service-ready",
                                 description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--pidfile", help="serpens-supervise's pid file")
    which.add_argument("--unit", help="the systemd unit")
    ap.add_argument("--log", required=True, help="the program's log (named in a failure)")
    ap.add_argument("--timeout-s", type=positive_float, default=60.0)
    ap.add_argument("--fresh", action="store_true",
                    help="it was (re)started just now: any restart is a failure")
    probe = ap.add_mutually_exclusive_group(required=True)
    probe.add_argument("--grpc", help="HOST:PORT serving gRPC health over mTLS")
    probe.add_argument("--etcd", help="an etcd client URL")
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    process = Supervised(args.pidfile) if args.pidfile else Unit(args.unit)
    if args.grpc:
        def healthy():
            return grpc_healthy(args.grpc, args.ca, args.cert, args.key, 2.0)
    else:
        def healthy():
            return etcd_healthy(args.etcd, args.ca, args.cert, args.key, 2.0)
    why = wait_ready(process, healthy, args.log, args.timeout_s, args.fresh)
    if why:
        print(f"serpens-service-ready: {args.pidfile or args.unit}: {why}", file=sys.stderr)
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
