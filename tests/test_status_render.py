"""`serpensctl status` and `top` (cli/status.py): a node's REPORTED tells how old its rates
are, so a dead agent's last rates (kept until its lease ends) read as such."""
import pytest

from serpens.cli.status import render

pytestmark = pytest.mark.unit


def node(name, reported_at):
    return {"name": name, "address": f"{name}:1", "sfcs": ["s"], "reported_at": reported_at,
            "ports": {"wan": {"rx_pps": 2400.0, "tx_pps": 2400.0}}}


def test_a_node_s_rates_say_how_old_they_are():
    text = render({"sfcs": [], "nodes": [node("s1", 999.6), node("s2", 988.0),
                                          node("s3", 0.0)]}, now=1000.0)
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert rows["NODE"][:3] == ["NODE", "ADDRESS", "REPORTED"]
    assert rows["s1"][2] == "now" and rows["s2"][2:4] == ["12s", "ago"]
    assert rows["s3"][2] == "-"   # (a record without the time)
