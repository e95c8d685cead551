"""cli/service_ready.py, what deploy/'s roles run after each (re)start: healthy when the
program answers over TLS; a program that exits (is restarted, or given up) fails at once with
its log's path and tail, not after the timeout; one that runs but never answers fails at the
timeout."""
import socket
import subprocess
import sys
import time

import pytest

from tests.support.etcd import ETCD, identity

pytestmark = pytest.mark.unit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(module: str, *args: str, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"serpens.cli.{module}", *args],
                          capture_output=True, text=True, timeout=timeout)


def etcd_argv(data_dir: str, client: int, peer: int) -> list[str]:
    i = identity("etcd", "etcd")
    return [ETCD, "--name=m", f"--data-dir={data_dir}",
            f"--listen-client-urls=https://127.0.0.1:{client}",
            f"--advertise-client-urls=https://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=m=http://127.0.0.1:{peer}",
            f"--cert-file={i.cert}", f"--key-file={i.key}", f"--trusted-ca-file={i.ca}",
            "--client-cert-auth", "--log-level=warn"]


def ready(pidfile, log, client: int, *extra: str) -> subprocess.CompletedProcess:
    i = identity("etcd", "etcd")
    return run("service_ready", "--pidfile", str(pidfile), "--log", str(log),
               "--etcd", f"https://127.0.0.1:{client}", "--ca", i.ca, "--cert", i.cert,
               "--key", i.key, *extra)


def test_a_supervised_etcd_is_healthy_and_one_that_exits_fails_at_once(tmp_path):
    pidfile, log = tmp_path / "etcd.pid", tmp_path / "etcd.log"
    client, peer = free_port(), free_port()
    try:
        assert run("supervise", "start", "--pidfile", str(pidfile), "--log", str(log), "--",
                   *etcd_argv(str(tmp_path / "data"), client, peer)).returncode == 0
        r = ready(pidfile, log, client, "--fresh", "--timeout-s", "60")
        assert r.returncode == 0 and r.stdout.strip() == "healthy", r.stderr
    finally:
        run("supervise", "stop", "--pidfile", str(pidfile))
    # its data directory is a file: etcd exits at once, again and again (as on a full disk)
    (tmp_path / "bad").write_text("")
    pidfile, log = tmp_path / "bad.pid", tmp_path / "bad.log"
    try:
        assert run("supervise", "start", "--pidfile", str(pidfile), "--log", str(log),
                   "--restart-s", "0.5", "--",
                   *etcd_argv(str(tmp_path / "bad"), client, peer)).returncode == 0
        began = time.monotonic()
        r = ready(pidfile, log, client, "--fresh", "--timeout-s", "100")
        assert r.returncode == 1
        assert time.monotonic() - began < 60                 # not the timeout
        assert f"see {log}" in r.stderr and "exited" in r.stderr
        assert "data-dir" in r.stderr or "data dir" in r.stderr   # the log's tail: etcd's error
    finally:
        run("supervise", "stop", "--pidfile", str(pidfile))


def test_a_program_that_runs_but_never_answers_fails_at_the_timeout(tmp_path):
    pidfile, log = tmp_path / "p.pid", tmp_path / "p.log"
    try:
        assert run("supervise", "start", "--pidfile", str(pidfile), "--log", str(log), "--",
                   "sh", "-c", "echo listening nowhere; sleep 60").returncode == 0
        r = ready(pidfile, log, free_port(), "--timeout-s", "2")
        assert r.returncode == 1
        assert "did not answer within 2 s" in r.stderr and "listening nowhere" in r.stderr
    finally:
        run("supervise", "stop", "--pidfile", str(pidfile))


def test_a_supervisor_that_gave_up_fails_at_once(tmp_path):
    pidfile, log = tmp_path / "p.pid", tmp_path / "p.log"
    assert run("supervise", "start", "--pidfile", str(pidfile), "--log", str(log),
               "--restart-s", "0", "--burst", "1", "--", "sh", "-c",
               "echo no such device eth9; exit 1").returncode == 0
    r = ready(pidfile, log, free_port(), "--timeout-s", "100")
    assert r.returncode == 1 and "supervisor is gone" in r.stderr
    assert "no such device eth9" in r.stderr
