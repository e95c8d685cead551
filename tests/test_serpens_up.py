"""`serpens up` (one node) with `--metrics`: every component serves Prometheus metrics over
HTTPS at the addresses `up` prints, readable with the cluster CA's admin certificate; and
`serpens down` after the agent was killed with SIGKILL leaves none of its DPDK files."""
import glob
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request

import pytest

from serpens.cli.cluster import local_node
from serpens.common.names import node_file_prefix

from support.etcd import free_port
from support.mounts import small_fs

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

SERPENS = os.path.join(os.path.dirname(sys.executable), "serpens")


def serpens(directory, *args, timeout=240):
    return subprocess.run([SERPENS, "--dir", str(directory), "--config",
                           str(directory) + ".conf", *args],
                          capture_output=True, text=True, timeout=timeout)


def free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def metrics_base() -> int:
    """A port p with p and p+10 free (the controller's and the agent's metrics)."""
    for _ in range(50):
        p = free_port()
        if p + 10 < 65536 and free(p + 10):
            return p
    pytest.skip("no free pair of ports")


def scrape(url: str, pki: dict) -> str:
    ctx = ssl.create_default_context(cafile=pki["ca"])
    ctx.load_cert_chain(pki["admin"]["cert"], pki["admin"]["key"])
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        return r.read().decode()


def test_up_with_metrics_serves_them_and_down_cleans_a_killed_agent(tmp_path):
    directory = tmp_path / "cluster"
    node = tmp_path / "node.yaml"
    node.write_text(local_node("uptest", pps=2000, pool=2, state_dir=str(tmp_path / "state")))
    base = metrics_base()
    try:
        r = serpens(directory, "up", "--node", str(node), "--metrics", str(base),
                    "--etcd-port", str(free_port()), "--api", f"127.0.0.1:{free_port()}",
                    "--agent", f"127.0.0.1:{free_port()}", "--timeout", "90")
        assert r.returncode == 0, r.stdout + r.stderr
        state = json.loads((directory / "cluster.json").read_text())
        urls = {"controller": f"https://127.0.0.1:{base}/metrics",
                "agent": f"https://127.0.0.1:{base + 10}/metrics"}
        for url in urls.values():
            assert url in r.stdout, r.stdout
        assert f"--cacert {state['pki']['ca']}" in r.stdout
        assert "serpens_controller_leader" in scrape(urls["controller"], state["pki"])
        assert 'node="uptest"' in scrape(urls["agent"], state["pki"])
        with pytest.raises(OSError):  # no client certificate: refused
            urllib.request.urlopen(urls["agent"], timeout=10, context=ssl.create_default_context(
                cafile=state["pki"]["ca"]))
        agent = state["processes"]["agent"]["pid"]
        prefix = node_file_prefix("uptest", agent)
        assert state["processes"]["agent"]["file_prefix"] == prefix
        os.kill(agent, signal.SIGKILL)
    finally:
        r = serpens(directory, "down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hugepage files of agent" in r.stdout, r.stdout
    assert glob.glob(f"/dev/hugepages/{prefix}map_*") == [] and not directory.exists()


def test_up_whose_instances_cannot_start_says_why(tmp_path):
    """The node's state directory is a full filesystem: the SFC's instances cannot start.
    `up` gives up (the SFC Failed, or its time-out) and prints the SFC's status message, not
    only that it was not ready; and the agent tried a bounded number of starts."""
    directory = tmp_path / "cluster"
    node = tmp_path / "node.yaml"
    with small_fs("tmpfs", "64k") as fs:
        node.write_text(local_node("upfull", pps=2000, pool=2, state_dir=fs))
        try:
            r = serpens(directory, "up", "--node", str(node), "--etcd-port", str(free_port()),
                        "--api", f"127.0.0.1:{free_port()}",
                        "--agent", f"127.0.0.1:{free_port()}", "--timeout", "30")
            assert r.returncode == 1, r.stdout + r.stderr
            assert "state filesystem full (ENOSPC)" in r.stderr, r.stdout + r.stderr
            log = (directory / "agent.log").read_text()
            tries = log.count("instance_manager: sfc 0: instances cannot start")
            # one line per back-off step, at most restarts+1 = 6 per run of the SFC (the
            # controller may run it again); without back-off, thousands a second
            assert 1 <= tries <= 30 and "7 failed start(s)" not in log, log[-3000:]
        finally:
            serpens(directory, "down")
