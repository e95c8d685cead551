"""`serpens up --servers N` / `serpens down`: a gateway and N servers in network namespaces,
traffic back at the gateway, a gateway that died started again by the next `up`, and nothing
left behind afterwards, also after an `up` that died half-way (its testbed's plan is in
cluster.json before anything is made)."""
import glob
import json
import os
import signal
import subprocess
import sys

import pytest

from serpens.cli import multi
from serpens.cli.testbed import Testbed, tag_for

from support.etcd import free_port

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(300),
              pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces: root")]

SERPENS = os.path.join(os.path.dirname(sys.executable), "serpens")


def serpens(directory, *args, timeout=240):
    return subprocess.run([SERPENS, "--dir", str(directory), "--config",
                           str(directory) + ".conf", *args],
                          capture_output=True, text=True, timeout=timeout)


def leftovers(bed: Testbed) -> list[str]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True,
                                text=True).stdout.split()
    links = os.listdir("/sys/class/net")
    return [n for n in bed.ns.values() if n in namespaces] + [
        l for l in (*bed.bridges.values(), *(x for m in bed.links.values() for x in m.values()))
        if l in links]


def test_down_removes_the_testbed_of_an_up_that_died_half_way(tmp_path):
    directory = tmp_path / "cluster"
    directory.mkdir()
    bed = multi.testbed(tag_for(str(directory)), 2)
    state = {"servers": 2, "testbed": bed.to_dict(), "processes": {
        "etcd": {"pid": 2 ** 22 + 1, "argv0": "/usr/bin/etcd", "argv": []}}}
    (directory / "cluster.json").write_text(json.dumps(state))
    try:
        bed.create()
        subprocess.run(["ip", "netns", "del", bed.ns["s2"]], check=True)  # half made
        assert leftovers(bed)
        r = serpens(directory, "down")
        assert r.returncode == 0, r.stdout + r.stderr
        assert leftovers(bed) == [] and not directory.exists()
    finally:
        bed.remove()


def test_up_with_servers_serves_the_sfc_through_the_gateway_and_down_removes_all(tmp_path):
    directory = tmp_path / "cluster"
    bed = multi.testbed(tag_for(str(directory)), 2)
    etcd_port = free_port()
    try:
        r = serpens(directory, "up", "--servers", "2", "--pps", "2000", "--timeout", "90",
                    "--etcd-port", str(etcd_port), "--api", f"127.0.0.1:{free_port()}")
        assert r.returncode == 0, r.stdout + r.stderr + _logs(directory)
        assert "sfc fw-mon-nat: placed, packets through the gateway ... ok" in r.stdout
        state = json.loads((directory / "cluster.json").read_text())
        assert set(state["processes"]) == {"etcd", "controller", "gateway", "agent-s1",
                                           "agent-s2"}
        assert leftovers(bed) and len(leftovers(bed)) == len(bed.ns) + 2 + 2 * len(bed.ns)
        # the status shows the SFC on both servers and the gateway's counters
        assert "GATEWAY gw" in r.stdout and "s1:1" in r.stdout and "s2:1" in r.stdout
        pids = [p["pid"] for p in state["processes"].values()]
        # a gateway that dies is started again by the next `up`, traffic back through it
        killed = state["processes"]["gateway"]["file_prefix"]
        assert killed == f"serpens-gw-gw-{state['processes']['gateway']['pid']}"
        assert glob.glob(f"/dev/hugepages/{killed}map_*")
        os.kill(state["processes"]["gateway"]["pid"], signal.SIGKILL)
        r = serpens(directory, "up", "--servers", "2")
        assert r.returncode == 0, r.stdout + r.stderr + _logs(directory)
        assert "gateway: restarting ... ok" in r.stdout and "agent-s1 (pid" in r.stdout
        assert "sfc fw-mon-nat: packets out ... ok" in r.stdout
        assert glob.glob(f"/dev/hugepages/{killed}map_*") == []  # what SIGKILL left: gone
        pids.append(json.loads((directory / "cluster.json").read_text())
                    ["processes"]["gateway"]["pid"])
    finally:
        r = serpens(directory, "down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert leftovers(bed) == [] and not directory.exists()
    assert not any(running(pid) for pid in pids)
    assert not os.path.exists(state["state_root"])


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan waits for PID 1 to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _logs(directory) -> str:
    out = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name.endswith(".log"):
            with open(os.path.join(directory, name), errors="replace") as f:
                out.append(f"--- {name}\n" + "".join(f.readlines()[-15:]))
    return "\n".join(out)
