"""`python -m serpens.bench.faults serve` for tests: one DPDK primary that runs fault scenarios
one after another (a fresh node and pool each), so a scenario costs its traffic phases, not a
DPDK boot and NF compiles. A server that died or hung is replaced at the next scenario."""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading

from serpens.bench.faults import SERVED


class ScenarioServer:
    def __init__(self, pps: float):
        self.pps = pps
        self.proc = None
        self.lines: queue.SimpleQueue = queue.SimpleQueue()
        fd, self.stderr_path = tempfile.mkstemp(prefix="serpens-faults-", suffix=".log")
        os.close(fd)

    def _start(self):
        with open(self.stderr_path, "a") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "serpens.bench.faults", "serve", str(self.pps)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        self.lines = queue.SimpleQueue()  # the dead server's reader ends on its own
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines),
                         daemon=True).start()

    @staticmethod
    def _read(stdout, lines):
        for line in stdout:
            lines.put(line)
        lines.put(None)

    def errors(self, since: int = 0) -> str:
        """The server's stderr since byte `since`, less the line each replacement pool
        process writes about the primary's pcap port (not an error)."""
        with open(self.stderr_path) as f:
            f.seek(since)
            text = f.read()
        return "\n".join(line for line in text.splitlines() if "Bus (vdev)" not in line)[-3000:]

    def run(self, timeout: float = 120.0, **args) -> dict:
        """Scenario.run(**args) in the server: its result."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        since = os.path.getsize(self.stderr_path)
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"no result in {timeout:g} s:\n{self.errors(since)}")
            if line is None:
                raise AssertionError(f"the server exited ({self.proc.wait()}):\n"
                                     f"{self.errors(since)}")
            if line.startswith(SERVED):
                break
        result = json.loads(line[len(SERVED):])
        assert "error" not in result, f"{result.get('error')}\n{self.errors(since)}"
        return result

    def close(self) -> tuple[int | None, str]:
        """Let the server close its primary and exit: its exit status (None if never
        started) and what it wrote to stderr."""
        code = None
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                code = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        errors = self.errors()
        os.unlink(self.stderr_path)
        return code, errors
