"""An agent registers its node in a real etcd with a lease and reports its load; losing the
agent is noticed through the lease, and the agent registers again once etcd is back."""
import asyncio
import json
import time

import pytest

from serpens.agent.node import Node
from serpens.agent.registration import Registration
from serpens.common.keys import Keys
from serpens.common.node_spec import parse_node
from serpens.common.store import Store

from support.etcd import PartitionProxy, client_identity, free_port, tls_args
from support.node_specs import NODE, sfc
from support.packets import udp
from support.sites import Wire, unique_tag

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]

NODES_PREFIX, node_key = Keys().nodes, Keys().node


@pytest.fixture
def node(dataplane, pool, areas, request):
    tag = unique_tag()
    wires = {name: Wire(dataplane, f"g{tag}{name}") for name in ("wan", "lan", "dmz")}
    n = Node(parse_node(NODE), [sfc("rest", 3)], dataplane=dataplane, pool=pool, areas=areas,
             ports={name: w.port for name, w in wires.items()}).start()
    yield n, wires
    n.close()
    for w in wires.values():
        w.close()


async def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


def test_node_record_carries_load_and_goes_with_the_agent(etcd, node):
    n, wires = node

    async def scenario():
        async with await Store.connect(etcd.endpoint, timeout=3, identity=client_identity()) as store:
            reg = await Registration(store, n.spec, n.stats, ttl=2, report_s=0.2).start()
            wires["wan"].send([udp(sport=1000 + i) for i in range(200)])
            wires["lan"].receive(200)

            async def reported_traffic():
                item = await store.get(node_key("edge-1"))
                load = json.loads(item.value)["load"]
                return load["sfcs"]["rest"]["in_pps"] > 0 and load["sfcs"]["rest"]["instances"]
            await wait_for(reported_traffic, 5)
            nodes, _ = await store.list(NODES_PREFIX)
            assert list(nodes) == [node_key("edge-1")]
            record = json.loads(nodes[node_key("edge-1")].value)
            assert record["ports"] == ["dmz", "lan", "wan"] and record["pool"] == 2
            await reg.close()
            assert await store.get(node_key("edge-1")) is None  # deregistered at once
    asyncio.run(scenario())


def test_a_lost_agent_is_noticed_through_its_lease_and_comes_back(etcd, node):
    n, wires = node

    async def scenario():
        proxy = await PartitionProxy(etcd.endpoint).start()
        async with await Store.connect(proxy.endpoint, timeout=1, identity=client_identity()) as agent_store, \
                await Store.connect(etcd.endpoint, timeout=3, identity=client_identity()) as observer:
            reg = await Registration(agent_store, n.spec, n.stats, ttl=1, report_s=0.2).start()
            assert await observer.get(node_key("edge-1")) is not None
            proxy.partition()  # the agent is cut off: its lease runs out
            t0 = time.monotonic()

            async def gone():
                return await observer.get(node_key("edge-1")) is None
            await wait_for(gone, 5)
            assert time.monotonic() - t0 < 3
            wires["wan"].send([udp(sport=2000 + i) for i in range(50)])
            assert len(wires["lan"].receive(50)) == 50  # traffic never stopped
            proxy.heal()

            async def back():
                return await observer.get(node_key("edge-1")) is not None
            await wait_for(back, 10)
            await reg.close()
        await proxy.close()
    asyncio.run(scenario())


def test_serpens_agent_registers_its_node_and_leaves_on_sigterm(etcd, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    root = os.path.join(os.path.dirname(__file__), "..")
    agent = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "serpens-agent"),
         "--node", "examples/node-local.yaml", "--sfc", "examples/fw-mon-nat.yaml",
         "--etcd", etcd.url, "--report-s", "0.2", "--listen", f"127.0.0.1:{free_port()}",
         *tls_args("serpens-agent", "agent")],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    async def record():
        async with await Store.connect(etcd.endpoint, timeout=3, identity=client_identity()) as store:
            item = await store.get(node_key("local"))
            return json.loads(item.value) if item else None
    try:
        deadline = time.monotonic() + 30
        while True:
            rec = asyncio.run(record())
            if rec and rec["load"]["sfcs"].get("fw-mon-nat", {}).get("out_pps", 0) > 0:
                break
            assert agent.poll() is None, agent.stdout.read()
            assert time.monotonic() < deadline, rec
            time.sleep(0.2)
    finally:
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=30)
    assert agent.returncode == 0, out
    assert asyncio.run(record()) is None
