"""`serpens down` after an agent was killed with SIGKILL: a DPDK primary that dies that way
cannot remove its hugepage files (/dev/hugepages/<prefix>map_*) or its runtime directory;
`down` removes them, from the file prefix recorded beside its PID, and never a live one's."""
import glob
import json
import os
import signal
import subprocess
import sys

import pytest

from serpens.cli import cluster
from serpens.common.names import node_file_prefix
from serpens.runtime_cy.primary import RUNTIME_ROOT

from support.cluster import Agent
from support.etcd import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

SERPENS = os.path.join(os.path.dirname(sys.executable), "serpens")

NODE = """
apiVersion: serpens/v1
kind: Node
metadata: {{name: {name}}}
spec:
  ports:
    wan: net_null_wan,no-rx=1
    lan: net_null_lan,no-rx=1
  input: [wan]
  output: lan
  pool: 1
  state_dir: {state_dir}
"""


def dpdk_files(prefix: str) -> list[str]:
    run_dir = os.path.join(RUNTIME_ROOT, prefix)
    return glob.glob(f"/dev/hugepages/{prefix}map_*") + (
        [run_dir] if os.path.isdir(run_dir) else [])


def start_agent(tmp_path, name: str) -> tuple[Agent, str]:
    node = tmp_path / f"{name}.yaml"
    node.write_text(NODE.format(name=name, state_dir=tmp_path / f"{name}-state"))
    return Agent(f"127.0.0.1:{free_port()}", str(node)), str(node)


def test_down_removes_the_hugepage_files_of_a_killed_agent_and_keeps_a_live_one_s(tmp_path):
    killed, node = start_agent(tmp_path, "down-killed")
    live, _ = start_agent(tmp_path, "down-live")
    agents = [killed]
    try:
        prefix = node_file_prefix("down-killed", killed.proc.pid)
        live_prefix = node_file_prefix("down-live", live.proc.pid)
        assert glob.glob(f"/dev/hugepages/{prefix}map_*"), "the agent maps no hugepages?"
        directory = tmp_path / "cluster"
        directory.mkdir()
        state = {"node": node, "servers": 0, "processes": {
            "agent": {"pid": killed.proc.pid, "argv0": "serpens-agent", "argv": [],
                      "file_prefix": prefix},
            "agent-live": {"pid": live.proc.pid, "argv0": "serpens-agent", "argv": [],
                           "file_prefix": live_prefix}}}
        assert cluster._file_prefix(state, "agent", killed.proc.pid) == prefix
        (directory / "cluster.json").write_text(json.dumps(state))
        killed.proc.send_signal(signal.SIGKILL)
        killed.proc.wait(10)
        assert dpdk_files(prefix)  # what kill -9 leaves behind
        # (only the dead one's: `down` would stop the live one, so ask the helper `down` uses)
        assert cluster.remove_dead_dpdk_files(state) == [prefix]
        assert dpdk_files(prefix) == []
        assert dpdk_files(live_prefix) and live.proc.poll() is None
        # and `serpens down` itself, for an agent recorded by an older `up` (no prefix in
        # cluster.json): its prefix is found from its node's name and its PID
        again, node = start_agent(tmp_path, "down-again")
        agents.append(again)
        state["processes"] = {"agent": {"pid": again.proc.pid, "argv0": "serpens-agent",
                                        "argv": []}}
        state["node"] = node
        (directory / "cluster.json").write_text(json.dumps(state))
        again_prefix = node_file_prefix("down-again", again.proc.pid)
        again.proc.send_signal(signal.SIGKILL)
        again.proc.wait(10)
        assert dpdk_files(again_prefix)
        r = subprocess.run([SERPENS, "--dir", str(directory), "--config",
                            str(tmp_path / "serpens.conf"), "down"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "hugepage files of agent" in r.stdout, r.stdout
        assert dpdk_files(again_prefix) == [] and not directory.exists()
    finally:
        assert live.stop() == 0, live.output()
        for a in agents:
            if a.proc.poll() is None:
                a.proc.kill()
                a.proc.wait(10)
