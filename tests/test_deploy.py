"""deploy/ end to end on the namespace testbed (deploy/testbed.sh; root): site.yml succeeds
over SSH into three namespace hosts (each its own sshd and hostname), a second run reports
changed=0 on every host, the deployed controller lists every agent through the serpensctl
context the playbook wrote, fw-mon-nat applied through it processes packets (their count
rises), an agent killed with SIGKILL is restarted by its supervisor and reports again, and
`down` (teardown.yml, then the testbed) leaves no process (by the PIDs recorded:
sshds, supervisors, their programs), namespace, bridge, mount, hugepage file or context (the
context current before `up` is current again).
`pytest -m deploy` runs it alone."""
import glob
import json
import os
import re
import subprocess
import sys
import time

import pytest

from serpens.common.names import node_file_prefix

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTBED = os.path.join(ROOT, "deploy", "testbed.sh")
BIN = os.path.dirname(sys.executable)
AGENTS = ["n2", "n3"]                    # deploy/inventory/testbed.yml's group agent


def run_testbed(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([TESTBED, *args], capture_output=True, text=True, timeout=timeout)


def recap(output: str) -> dict:
    """PLAY RECAP's counts per host: {host: {"ok": n, "changed": n, ...}}."""
    hosts = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines()[1:]:
        m = re.match(r"^(\S+)\s+:\s+(ok=.*)$", line)
        if not m:
            break                        # the recap ends at its first other line
        hosts[m[1]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m[2])}
    return hosts


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_deploy_testbed(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the testbed needs root (namespaces, bridges, sshd)")
    directory, config = str(tmp_path / "tb"), str(tmp_path / "serpens-config")
    where = ["--dir", directory, "--config", config]
    state, pids, prefixes, down, namespaces = {}, {}, [], None, set()
    # the admin's own current context: `up` makes the testbed's current, `down` puts it back
    mine = {"name": "mine", "server": "127.0.0.1:1", "insecure": True}
    with open(config, "w") as f:
        json.dump({"apiVersion": "serpens/v1", "kind": "Config", "current-context": "mine",
                   "contexts": [mine]}, f)
    try:
        up = run_testbed("up", *where, "--timeout", "120")
        assert up.returncode == 0, up.stdout[-6000:] + up.stderr[-3000:]
        with open(os.path.join(directory, "testbed.json")) as f:
            state = json.load(f)
        first = recap(up.stdout)
        assert set(first) == {"n1", "n2", "n3", "localhost"}
        assert all(c["failed"] == 0 and c["unreachable"] == 0 for c in first.values()), (
            first, up.stdout[-4000:])
        # every program the playbook started, by the pid files of its supervisor
        for path in glob.glob(os.path.join(directory, "hosts", "*", "run", "serpens", "*.pid")):
            with open(path) as f:
                pids[path] = int(f.read())
            with open(path + ".child") as f:
                pids[path + ".child"] = int(f.read())
        names = {os.path.relpath(p, directory) for p in pids if p.endswith(".pid")}
        assert names == {f"hosts/{h}/run/serpens/serpens-{c}.pid" for h, c in [
            ("n1", "etcd"), ("n2", "etcd"), ("n3", "etcd"), ("n1", "controller"),
            ("n2", "controller"), ("n1", "gateway"), ("n2", "agent"), ("n3", "agent")]}
        assert all(alive(p) for p in pids.values()), pids
        namespaces = {os.stat(f"/run/netns/{ns}").st_ino for ns in state["namespaces"]}
        prefixes = [node_file_prefix(h, pids[os.path.join(
            directory, "hosts", h, "run", "serpens", "serpens-agent.pid.child")]) for h in AGENTS]
        # each host is its own machine as far as SSH shows: its address, its hostname
        for host, sshd in state["sshd"].items():
            assert alive(sshd["pid"])
            r = subprocess.run(
                ["ssh", "-i", os.path.join(directory, "ssh", "id_ed25519"), "-o",
                 f"UserKnownHostsFile={directory}/ssh/known_hosts", "-o", "BatchMode=yes",
                 f"root@{_address(state, host)}", "hostname"],
                capture_output=True, text=True, timeout=60)
            assert r.stdout.strip() == f"sp{state['tag']}{host}", r.stderr

        again = run_testbed("play", "site.yml", *where)
        assert again.returncode == 0, again.stdout[-6000:]
        second = recap(again.stdout)
        assert set(second) == set(first)
        assert {h: c["changed"] for h, c in second.items()} == {h: 0 for h in second}

        ctl = [os.path.join(BIN, "serpensctl"), "--config", config, "--context",
               state["context"]]
        nodes = json.loads(subprocess.run([*ctl, "get", "nodes", "-o", "json"], check=True,
                                          capture_output=True, text=True, timeout=60).stdout)
        assert sorted(n["name"] for n in nodes) == AGENTS
        assert _config(config)["current-context"] == state["context"]

        def processed() -> int:
            out = subprocess.run([*ctl, "usage", "fw-mon-nat", "-o", "json"], check=True,
                                 capture_output=True, text=True, timeout=60).stdout
            return json.loads(out)["sfcs"][0]["packets"]
        before = processed()
        time.sleep(3)
        after = processed()
        assert 0 < before < after, (before, after)

        # an agent that dies is restarted by its supervisor (a new PID, the same supervisor)
        # and registers again
        n3 = os.path.join(directory, "hosts", "n3", "run", "serpens", "serpens-agent.pid")
        killed, since = pids[n3 + ".child"], time.time()
        os.kill(killed, 9)
        deadline = time.monotonic() + 60
        while _read_pid(n3 + ".child") in (0, killed) and time.monotonic() < deadline:
            time.sleep(0.2)
        pids[n3 + ".restarted"] = _read_pid(n3 + ".child")
        assert pids[n3 + ".restarted"] not in (0, killed) and alive(pids[n3])
        prefixes.append(node_file_prefix("n3", pids[n3 + ".restarted"]))
        while time.monotonic() < deadline and not _reported_since(ctl, "n3", since):
            time.sleep(0.5)
        assert _reported_since(ctl, "n3", since)
    finally:
        if os.path.exists(os.path.join(directory, "testbed.json")):
            down = run_testbed("down", *where, "--quiet")
    assert down is None or down.returncode == 0, down.stdout[-6000:] + down.stderr[-3000:]
    # nothing left: processes, namespaces, bridges, mounts, hugepage files, files, context
    left = {p: pid for p, pid in pids.items() if alive(pid)}
    left.update({f"sshd {h}": s["pid"] for h, s in state.get("sshd", {}).items()
                 if alive(s["pid"])})
    assert left == {}
    assert [pid for pid in _pids() if _netns(pid) in namespaces] == []   # nothing in them
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in state.get("namespaces", []))
    assert not [b for b in state.get("bridges", []) if os.path.exists(f"/sys/class/net/{b}")]
    with open("/proc/mounts") as f:
        mounts = f.read()
    assert directory not in mounts and not any(
        f"/run/netns/{ns} " in mounts for ns in state.get("namespaces", []))
    assert [f for p in prefixes for f in glob.glob(f"/dev/hugepages/{p}map_*")
            + glob.glob(f"/var/run/dpdk/{p}")] == []
    assert not os.path.exists(directory)
    assert _config(config) == {"apiVersion": "serpens/v1", "kind": "Config",
                               "current-context": "mine", "contexts": [mine]}


def _config(path: str) -> dict:
    import yaml
    with open(path) as f:
        return yaml.safe_load(f)


def _address(state: dict, host: str) -> str:
    from serpens.cli.testbed import Testbed
    return Testbed.from_dict(state["testbed"]).address[host]


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _netns(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return 0


def _read_pid(path: str) -> int:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def _reported_since(ctl: list[str], node: str, since: float) -> bool:
    """Node `node` is listed with a record its agent wrote after `since` (a killed agent's
    record is never refreshed: a live one registered again)."""
    r = subprocess.run([*ctl, "get", "nodes", "-o", "json"], capture_output=True, text=True,
                       timeout=60)
    if r.returncode:
        return False
    return any(n["name"] == node and json.loads(n["record_json"])["reported_at"] > since
               for n in json.loads(r.stdout))
