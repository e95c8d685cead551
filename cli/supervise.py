"""serpens-supervise: a program kept running where systemd is not PID 1 (deploy/'s namespace
testbed), with a unit's semantics: a pid file, restart on failure, a start limit, stop by
SIGTERM.

    serpens-supervise start --pidfile P --log L -- PROGRAM ARGS...   # idempotent
    serpens-supervise stop --pidfile P
    serpens-supervise status --pidfile P

`start` detaches a supervisor (its own session; P holds the supervisor's PID, P.argv the
command line as JSON) that runs PROGRAM with its output appended to L, restarts it when it
exits with a failure (P.child: its PID) (non-zero status or a signal it did not get from us) after --restart-s,
at most --burst times in --interval-s seconds (then the supervisor gives up and removes P, as
a unit stays failed). It prints `started`, `running` (the same command line already runs:
nothing done) or `restarted` (another command line ran: stopped, then started), so ansible
reports a change only when there was one. `stop` sends the supervisor SIGTERM: it passes it
to the program, waits --stop-timeout-s, then kills it, and removes P; it prints `stopped` or
`absent`. A PID in P is trusted only while /proc says it is this supervisor for P (a reused
PID is never signalled). P.starts counts the program's starts under this supervisor (1 for
a fresh start: more means it exited since; cli/service_ready.py reads it).

The program dies with its supervisor (PR_SET_PDEATHSIG: a supervisor killed by SIGKILL leaves
no orphan), and `start`/`stop` first end a leftover program of a supervisor that is gone (P.child
still names a live process running P.argv's command line), so no second copy of a program ever
runs beside the first (two agents on one address). Exit codes: 0 done, 1 failed (a message
says why), 2 bad usage.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time

from serpens.common.argtypes import number, positive_float, positive_int

MARK = "serpens-supervise"
GAVE_UP = 4                   # the supervisor's exit status after its start limit
PR_SET_PDEATHSIG = 1


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def supervisor_pid(pidfile: str) -> int:
    """The PID of the live supervisor of `pidfile`, else 0."""
    text = _read(pidfile)
    if not text.isdigit():
        return 0
    pid = int(text)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return 0
    except OSError:
        return 0
    ours = any(os.path.basename(a) == MARK or a.endswith("supervise.py") or a.endswith(
        "serpens.cli.supervise") for a in argv[:3])
    return pid if ours and os.path.abspath(pidfile) in argv else 0


def _argv_of(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return None


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stop_leftover(pidfile: str, timeout: float) -> bool:
    """End the program a dead supervisor of `pidfile` left running (P.child names it and it
    still runs P.argv's command line: a reused PID is left alone). True if there was one."""
    text = _read(pidfile + ".child")
    try:
        wanted = json.loads(_read(pidfile + ".argv") or "null")
    except ValueError:
        wanted = None
    if not text.isdigit() or not wanted:
        return False
    pid = int(text)

    def runs_it() -> bool:   # a script's cmdline is its interpreter's, then argv
        argv = _argv_of(pid)
        return bool(argv) and wanted[0] in argv and argv[len(argv) - len(wanted) + 1:] == \
            wanted[1:] and not _zombie(pid)
    if not runs_it():
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while runs_it() and time.monotonic() < deadline:
        time.sleep(0.05)
    if runs_it():
        os.kill(pid, signal.SIGKILL)
        while runs_it() and time.monotonic() < deadline + 5:
            time.sleep(0.05)
    _remove(pidfile + ".child")
    return True


def stop(pidfile: str, timeout: float) -> str:
    pid = supervisor_pid(pidfile)
    if not pid:
        _remove(pidfile)
        return "stopped" if stop_leftover(pidfile, timeout) else "absent"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout + 5   # the supervisor's own wait, then a margin
    while supervisor_pid(pidfile) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    if supervisor_pid(pidfile) == pid:
        os.kill(pid, signal.SIGKILL)
    _remove(pidfile)
    return "stopped"


def start(args) -> str:
    pidfile = os.path.abspath(args.pidfile)
    argv_file = pidfile + ".argv"
    wanted = json.dumps(args.argv)
    outcome = "started"
    if supervisor_pid(pidfile):
        if _read(argv_file) == wanted:
            return "running"
        stop(pidfile, args.stop_timeout_s)
        outcome = "restarted"
    elif stop_leftover(pidfile, args.stop_timeout_s):
        outcome = "restarted"
    for path in (pidfile, args.log):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(argv_file, "w") as f:
        f.write(wanted)
    # the supervisor: this module again, detached in its own session, stdio to the log
    command = [sys.executable, "-m", "serpens.cli.supervise", "_run", "--pidfile", pidfile,
               "--log", os.path.abspath(args.log), "--restart-s", str(args.restart_s),
               "--burst", str(args.burst), "--interval-s", str(args.interval_s),
               "--stop-timeout-s", str(args.stop_timeout_s), "--", *args.argv]
    with open(args.log, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, cwd="/")
    deadline = time.monotonic() + 10
    while supervisor_pid(pidfile) != proc.pid:   # it writes its pid file first thing
        if proc.poll() in (0, GAVE_UP):   # ran, and already done (or gave up: see the log)
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"serpens-supervise: the supervisor of {pidfile} did not start "
                             f"(see {args.log})")
        time.sleep(0.02)
    return outcome


def run(args) -> int:
    """The supervisor itself (`_run`): keep args.argv running until SIGTERM."""
    pidfile = args.pidfile
    with open(pidfile + f".tmp{os.getpid()}", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(pidfile + f".tmp{os.getpid()}", pidfile)
    stopping = False
    child: subprocess.Popen | None = None

    def on_term(signum, frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    starts: list[float] = []
    started = 0
    code = 0
    try:
        while not stopping:
            now = time.monotonic()
            starts = [t for t in starts if now - t < args.interval_s] + [now]
            if len(starts) > args.burst:
                _log(f"{len(starts) - 1} starts in {args.interval_s:g} s: giving up")
                code = GAVE_UP
                break
            with open(args.log, "ab") as log:
                child = subprocess.Popen(args.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, preexec_fn=_die_with_parent)
            with open(pidfile + ".child", "w") as f:   # for whoever checks what runs
                f.write(f"{child.pid}\n")
            started += 1
            with open(pidfile + ".starts", "w") as f:
                f.write(f"{started}\n")
            _log(f"started pid {child.pid}: {' '.join(args.argv)}")
            status = child.wait()
            if stopping:
                break
            if status == 0:
                _log(f"pid {child.pid} exited 0: done")
                break
            _log(f"pid {child.pid} exited with {status}: restarting in {args.restart_s:g} s")
            _sleep_unless(lambda: stopping, args.restart_s)
        if child is not None and child.poll() is None:
            try:
                child.wait(timeout=args.stop_timeout_s)
            except subprocess.TimeoutExpired:
                _log(f"pid {child.pid} still runs after {args.stop_timeout_s:g} s: killing it")
                child.kill()
                child.wait()
    finally:
        if _read(pidfile) == str(os.getpid()):
            _remove(pidfile)
            _remove(pidfile + ".child")
            _remove(pidfile + ".starts")
    return code


def _die_with_parent():
    """In the child, before exec: SIGTERM when the supervisor dies, however it dies."""
    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0):
        os._exit(127)
    if os.getppid() != parent:   # it died before the prctl
        os._exit(127)


def _sleep_unless(stop_now, seconds: float):
    deadline = time.monotonic() + seconds
    while not stop_now() and time.monotonic() < deadline:
        time.sleep(0.05)


def _log(message: str):
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} serpens-supervise: {message}", flush=True)


def _remove(path: str):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=MARK, description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("start", "_run"):
        p = sub.add_parser(name, help="start PROGRAM supervised (idempotent)"
                           if name == "start" else argparse.SUPPRESS)
        p.add_argument("--pidfile", required=True)
        p.add_argument("--log", required=True, help="PROGRAM's output is appended here")
        p.add_argument("--restart-s", type=number(float, 0), default=1.0)
        p.add_argument("--burst", type=positive_int, default=10)
        p.add_argument("--interval-s", type=positive_float, default=60.0)
        p.add_argument("--stop-timeout-s", type=positive_float, default=30.0)
        p.add_argument("argv", nargs="+", metavar="PROGRAM")
    for name in ("stop", "status"):
        p = sub.add_parser(name, help=f"{name} the supervisor of --pidfile")
        p.add_argument("--pidfile", required=True)
        p.add_argument("--stop-timeout-s", type=positive_float, default=30.0)
    return ap


def not_a_pid_file(pidfile: str) -> str | None:
    """Why `pidfile` is no pid file of ours to replace or remove (None: absent, or a PID):
    `--pidfile notes.txt` must not delete notes.txt."""
    if not os.path.lexists(pidfile):
        return None
    if not os.path.isfile(pidfile) or os.path.islink(pidfile):
        return "exists and is not a plain file"
    text = _read(pidfile)
    return None if not text or text.isdigit() else "holds something else than a PID"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "_run":
        return run(args)
    why = not_a_pid_file(os.path.abspath(args.pidfile))
    if why:
        print(f"{MARK}: --pidfile {args.pidfile}: {why}; left alone", file=sys.stderr)
        return 2
    if args.command == "stop":
        print(stop(os.path.abspath(args.pidfile), args.stop_timeout_s))
        return 0
    if args.command == "status":
        pid = supervisor_pid(os.path.abspath(args.pidfile))
        print(f"running {pid}" if pid else "absent")
        return 0 if pid else 3
    why = _not_a_log(args.log)
    if why:
        print(f"{MARK}: --log {args.log}: {why}", file=sys.stderr)
        return 2
    print(start(args))
    return 0


def _not_a_log(path: str) -> str | None:
    """Why PROGRAM's output cannot be appended to `path` (None: it can, or its directory can
    be made), found before anything is stopped or started."""
    if os.path.isdir(path):
        return "is a directory"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # (non-blocking: a FIFO with no reader is refused, not waited on)
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644))
        return None
    except OSError as e:
        return e.strerror


if __name__ == "__main__":
    sys.exit(main())
