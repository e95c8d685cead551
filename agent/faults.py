"""What went wrong with an SFC's instances, and what to do about it (DESIGN §8).

An instance that dies (a fault in an NF, SIGSYS from the sandbox, the watchdog's SIGKILL, a
kill from outside) is described from what its process left behind: the exit signal, the
crash record its fatal-signal handler wrote into the control block (runtime.c), the step
that was running, and whether the router's watchdog killed it. `CrashPolicy` turns the
crashes of one SFC on one node into a phase, the way a FaaS platform reports a function in a
crash loop:

* Running: no crash in the last `window_s`.
* Degraded: it crashed; instances start again after a back-off that doubles with each crash
  in the window (`first_backoff_s` .. `max_backoff_s`); its packets wait (bounded) meanwhile.
* Failed: more than `max_restarts` crashes in the window; no instance starts again and its
  packets are dropped and counted (`sfc_failed`) until the SFC is applied again.

An instance that cannot start (its NF's init() fails, e.g. its state table does not fit on
a full state filesystem) counts like a crash: retrying at once would only fail again, as
fast as the node can (thousands of attempts and log lines a second).
"""
from __future__ import annotations

import functools
import re
import signal
import time
from collections import deque
from dataclasses import dataclass

RUNNING, DEGRADED, FAILED = "Running", "Degraded", "Failed"


@functools.cache
def _syscall_names() -> dict[int, str]:
    """x86-64 system call numbers -> names, from the kernel headers when installed."""
    names = {}
    try:
        with open("/usr/include/x86_64-linux-gnu/asm/unistd_64.h") as f:
            for m in re.finditer(r"#define __NR_(\w+) (\d+)", f.read()):
                names[int(m.group(2))] = m.group(1)
    except OSError:
        pass
    return names


def _signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


@dataclass(frozen=True)
class Fault:
    """One instance's death."""
    nf: str            # the NF that ran (or "" if none did)
    signal: str        # "SIGSEGV", ...; "" for a plain exit
    detail: str        # the address, the refused call, the watchdog
    at: float          # time.monotonic() it was found dead
    tsc: int = 0       # TSC of the fault or kill when known (benchmarks: detection time)
    pid: int = 0
    start: bool = False  # not a death: an instance could not start (`detail` says why)

    def describe(self) -> str:
        if self.start:
            return f"instances cannot start: {self.detail}"
        where = f"NF {self.nf!r}" if self.nf else "the runtime (outside any NF)"
        what = self.signal or "exited"
        return f"{where}: {what}" + (f" {self.detail}" if self.detail else "")


def describe_death(returncode: int | None, crash: dict | None, step: int, step_names: list,
                   watchdog_ms: float | None, watchdog_tsc: int = 0, pid: int = 0) -> Fault:
    """A Fault from a dead pool process: `returncode` as Popen gives it (-signal), `crash`
    its control block's record (PoolCtl.crash()), `step` the step running when it was last
    seen (PoolCtl.current_step()), `watchdog_ms` the budget if the watchdog killed it (at
    `watchdog_tsc`)."""
    if crash is not None:
        step = crash["step"]
    nf = step_names[step] if 0 <= step < len(step_names) else ""
    now = time.monotonic()
    if watchdog_ms is not None and crash is None:  # (a crash record: it died by itself)
        return Fault(nf, "SIGKILL", f"by the watchdog: one batch ran over {watchdog_ms:g} ms",
                     now, watchdog_tsc, pid)
    if crash is not None:
        name = _signal_name(crash["signo"])
        if crash["signo"] == signal.SIGSYS:
            call = _syscall_names().get(crash["syscall"], "")
            call = f"{crash['syscall']} ({call})" if call else str(crash["syscall"])
            detail = (f"system call {call} refused by the sandbox, "
                      f"at 0x{crash['addr']:x}")
        else:
            detail = f"at address 0x{crash['addr']:x} (ip 0x{crash['ip']:x})"
        return Fault(nf, name, detail, now, crash["tsc"], pid)
    if returncode is not None and returncode < 0:
        return Fault(nf, _signal_name(-returncode), "(from outside the process)", now, 0, pid)
    if returncode is None:  # (the kernel was still finishing it: SIGKILL from outside)
        return Fault(nf, "killed", "from outside the process", now, 0, pid)
    return Fault(nf, "", f"with status {returncode}", now, 0, pid)


def start_failure(reason: str, pid: int = 0) -> Fault:
    """A Fault for an instance whose start failed with `reason` while its process lived."""
    return Fault("", "", reason, time.monotonic(), 0, pid, start=True)


class CrashPolicy:
    """Crash history of one SFC on one node; thread-safe use is the caller's."""

    def __init__(self, *, max_restarts: int = 5, window_s: float = 60.0,
                 first_backoff_s: float = 0.01, max_backoff_s: float = 1.0):
        self.max_restarts, self.window_s = max_restarts, window_s
        self.first_backoff_s, self.max_backoff_s = first_backoff_s, max_backoff_s
        self.crashes: deque[Fault] = deque()   # within the window
        self.log: deque[Fault] = deque(maxlen=1024)  # every one (the latest 1024)
        self.backoffs: deque[float] = deque(maxlen=1024)  # the wait set after each (s)
        self.total = 0          # crashes (deaths) ever
        self.failed_starts = 0  # starts that failed with the process alive, ever
        self.failed = False
        self.not_before = 0.0  # no instance starts before this (time.monotonic())

    def record(self, fault: Fault):
        if fault.start:
            self.failed_starts += 1
        else:
            self.total += 1
        self.crashes.append(fault)
        self.log.append(fault)
        self._forget(fault.at)
        n = len(self.crashes)
        if n > self.max_restarts:
            self.failed = True
        backoff = min(self.first_backoff_s * 2 ** (n - 1), self.max_backoff_s)
        self.not_before = fault.at + backoff
        self.backoffs.append(backoff)

    def may_start(self, now: float | None = None) -> bool:
        return not self.failed and (now or time.monotonic()) >= self.not_before

    def phase(self, now: float | None = None) -> tuple[str, str]:
        """(phase, message) as the SFC's status shows them."""
        now = now or time.monotonic()
        self._forget(now)
        if self.failed:
            last = self.crashes[-1] if self.crashes else None
            did = "failed to start" if last and last.start else "crashed"
            return FAILED, (f"{last.describe() if last else 'crashed'}; {did} "
                            f"{self.max_restarts + 1} times within {self.window_s:g} s: "
                            f"no more restarts, its packets are dropped until it is "
                            f"applied again")
        if not self.crashes:
            return RUNNING, ""
        last = self.crashes[-1]
        wait = max(0.0, self.not_before - now)
        again = f"restarting in {wait * 1e3:.0f} ms" if wait else "restarting"
        what = "failed start(s)" if last.start else "crash(es)"
        return DEGRADED, (f"{last.describe()}; {len(self.crashes)} {what} in the last "
                          f"{self.window_s:g} s, {again}")

    def _forget(self, now: float):
        if self.failed:
            return  # a failed SFC keeps its record until it is applied again
        while self.crashes and now - self.crashes[0].at > self.window_s:
            self.crashes.popleft()
