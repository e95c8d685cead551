"""serpens-supervise (cli/supervise.py), what runs the testbed's processes in place of
systemd: start is idempotent and says whether it did anything, a program that fails is
restarted (a new PID), one that exits 0 is not, a start limit gives up, stop ends the program
and its supervisor and removes the pid file, and a pid file naming another process is never
trusted."""
import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.unit


def supervise(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "serpens.cli.supervise", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode in (0, 3), r.stderr
    return r.stdout.strip()


def wait_until(probe, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return got


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(path) -> int:
    try:
        text = path.read_text().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def test_start_is_idempotent_restarts_on_failure_and_stop_ends_everything(tmp_path):
    pidfile, log = tmp_path / "run" / "p.pid", tmp_path / "p.log"
    child = tmp_path / "run" / "p.pid.child"
    # the program fails once a second (exit 3): the supervisor starts it again
    argv = ["sh", "-c", "echo ran; sleep 1; exit 3"]
    common = ["--pidfile", str(pidfile), "--log", str(log), "--restart-s", "0.2"]
    try:
        assert supervise("start", *common, "--", *argv) == "started"
        supervisor = read_pid(pidfile)
        assert alive(supervisor)
        first = wait_until(lambda: read_pid(child))
        assert supervise("start", *common, "--", *argv) == "running"
        assert read_pid(pidfile) == supervisor
        second = wait_until(lambda: read_pid(child) not in (0, first) and read_pid(child))
        assert not alive(first) and alive(supervisor)
        assert "exited with 3: restarting" in log.read_text()
        # another command line: the old one is stopped, the new one started
        assert supervise("start", *common, "--", "sleep", "30") == "restarted"
        third = wait_until(lambda: read_pid(child) not in (0, second) and read_pid(child))
        assert supervise("status", "--pidfile", str(pidfile)).startswith("running")
        assert supervise("stop", "--pidfile", str(pidfile)) == "stopped"
        assert not alive(third) and not pidfile.exists()
        assert supervise("stop", "--pidfile", str(pidfile)) == "absent"
        assert supervise("status", "--pidfile", str(pidfile)) == "absent"
    finally:
        supervise("stop", "--pidfile", str(pidfile))


def test_a_program_that_keeps_failing_is_given_up(tmp_path):
    pidfile, log = tmp_path / "p.pid", tmp_path / "p.log"
    try:
        assert supervise("start", "--pidfile", str(pidfile), "--log", str(log),
                         "--restart-s", "0", "--burst", "3", "--", "false") == "started"
        wait_until(lambda: not pidfile.exists())
        text = log.read_text()
        assert text.count("exited with 1: restarting") == 3 and "giving up" in text
    finally:
        supervise("stop", "--pidfile", str(pidfile))


def test_a_program_that_exits_0_is_done(tmp_path):
    pidfile, log = tmp_path / "p.pid", tmp_path / "p.log"
    assert supervise("start", "--pidfile", str(pidfile), "--log", str(log), "--",
                     "true") == "started"
    wait_until(lambda: not pidfile.exists())
    assert "exited 0: done" in log.read_text()


def test_a_pid_file_naming_another_process_is_not_trusted(tmp_path):
    pidfile = tmp_path / "p.pid"
    other = subprocess.Popen(["sleep", "30"])
    try:
        pidfile.write_text(f"{other.pid}\n")
        assert supervise("status", "--pidfile", str(pidfile)) == "absent"
        assert supervise("stop", "--pidfile", str(pidfile)) == "absent"
        assert other.poll() is None                      # not signalled
    finally:
        other.kill()
        other.wait()


def test_the_program_dies_with_a_killed_supervisor(tmp_path):
    pidfile, log = tmp_path / "p.pid", tmp_path / "p.log"
    try:
        assert supervise("start", "--pidfile", str(pidfile), "--log", str(log), "--",
                         "sleep", "60") == "started"
        child = wait_until(lambda: read_pid(tmp_path / "p.pid.child"))
        os.kill(read_pid(pidfile), 9)
        wait_until(lambda: not alive(child))             # PR_SET_PDEATHSIG
    finally:
        supervise("stop", "--pidfile", str(pidfile))


def test_a_leftover_program_of_a_dead_supervisor_is_stopped_before_another_starts(tmp_path):
    pidfile, log = tmp_path / "p.pid", tmp_path / "p.log"
    # it ignores SIGTERM (and so the supervisor's death): it outlives a supervisor killed -9
    argv = ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]
    common = ["--pidfile", str(pidfile), "--log", str(log), "--stop-timeout-s", "0.5"]
    try:
        assert supervise("start", *common, "--", *argv) == "started"
        child = wait_until(lambda: read_pid(tmp_path / "p.pid.child"))
        os.kill(read_pid(pidfile), 9)
        wait_until(lambda: supervise("status", "--pidfile", str(pidfile)) == "absent")
        assert alive(child)
        assert supervise("start", *common, "--", *argv) == "restarted"
        assert not alive(child)
        assert wait_until(lambda: read_pid(tmp_path / "p.pid.child")) != child
        # and `stop` of a dead supervisor ends its leftover program too
        second = read_pid(tmp_path / "p.pid.child")
        os.kill(read_pid(pidfile), 9)
        wait_until(lambda: supervise("status", "--pidfile", str(pidfile)) == "absent")
        assert supervise("stop", *common[:2], "--stop-timeout-s", "0.5") == "stopped"
        assert not alive(second)
    finally:
        supervise("stop", "--pidfile", str(pidfile))
