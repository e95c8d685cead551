"""Scrapes of real processes: `serpens-controller`, `serpens-agent` and `serpens-gateway` with
--metrics serve Prometheus' text format over HTTPS to a certificate of the cluster CA; each
scrape parses with prometheus_client's parser and holds its component's declared families
with their labels and the values of what happened (an SFC applied and flowing, routes pushed
and frames sent). A client without a cluster certificate is refused; plain HTTP is served
only on loopback."""
import os
import ssl
import subprocess
import urllib.error
import urllib.request

import grpc
import pytest
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from serpens.agent.metrics import FAMILIES as AGENT
from serpens.common.records import RouteRecord, RouteServer
from serpens.controller.metrics import FAMILIES as CONTROLLER
from serpens.gateway.metrics import FAMILIES as GATEWAY
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc

from support.cluster import BIN, FW_MON_NAT, NODE, Agent, Controller, Gateway, status, wait_until
from support.etcd import free_port, identity, secure_channel
from support.metrics import check_families, scrape, tls_context, value, values
from support.packets import flow_frame

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def metrics_args():
    port = free_port()
    return ["--metrics", f"127.0.0.1:{port}"], f"https://127.0.0.1:{port}/metrics"


@pytest.fixture(scope="module")
def cluster(etcd, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    (tmp / "node.yaml").write_text(NODE)
    c_args, c_url = metrics_args()
    a_args, a_url = metrics_args()
    controller = Controller(etcd.endpoint, args=["--resync-s", "0.5", *c_args])
    agent = Agent(etcd.endpoint, str(tmp / "node.yaml"), args=a_args)
    try:
        controller.stub.ApplySFC(pb.ApplySFCRequest(spec=FW_MON_NAT), timeout=10)
        wait_until(lambda: (s := agent.sfcs().get("fw-mon-nat")) and s.out, 60,
                   controller.output)
        wait_until(lambda: status(controller.stub, "fw-mon-nat").phase == "Running", 30,
                   controller.output)
        yield controller, c_url, agent, a_url
    finally:
        assert agent.stop() == 0, agent.output()
        controller.stop()


def test_the_controller_s_scrape(cluster):
    controller, url, _, _ = cluster
    got = scrape(url)
    check_families(got, CONTROLLER, required=set(CONTROLLER) - {"serpens_controller_etcd_errors"})
    assert value(got, "serpens_controller_leader") == 1
    handled = values(got["serpens_grpc_server_handled"])
    assert handled[frozenset({"method": "/serpens.v1.Serpens/ApplySFC", "code": "OK"}.items())] \
        == 1
    assert any(dict(k)["method"] == "/serpens.v1.Serpens/GetSFC" for k in handled)
    latency = values(got["serpens_grpc_server_handling_seconds"],
                     "serpens_grpc_server_handling_seconds_count")
    assert latency[frozenset({"method": "/serpens.v1.Serpens/ApplySFC"}.items())] == 1
    assert value(got, "serpens_controller_reconcile_passes", result="done") >= 1
    assert values(got["serpens_controller_reconcile_seconds"],
                  "serpens_controller_reconcile_seconds_count")[frozenset()] >= 1
    # a refused call is counted with its code (the interceptor runs outside authorization)
    with secure_channel(controller.address, identity("eve", "viewer")) as channel:
        with pytest.raises(grpc.RpcError):
            serpens_pb2_grpc.SerpensStub(channel).DeleteSFC(pb.DeleteSFCRequest(name="x"),
                                                            timeout=5)
    denied = {"method": "/serpens.v1.Serpens/DeleteSFC", "code": "PERMISSION_DENIED"}
    assert value(scrape(url), "serpens_grpc_server_handled", **denied) == 1


def test_the_agent_s_scrape(cluster):
    _, _, agent, url = cluster
    got = wait_until(lambda: (g := scrape(url)) and values(
        g["serpens_latency_seconds"], "serpens_latency_seconds_count") and g, 10)
    check_families(got, AGENT)
    sfc = {"node": "local", "sfc": "fw-mon-nat"}
    assert value(got, "serpens_sfc_rx_packets", **sfc) > 0
    assert value(got, "serpens_port_rx_packets", node="local", port="wan") > 0
    assert {dict(k)["nf"] for k in values(got["serpens_nf_rx_packets"])} == {"fw", "mon", "nat"}
    assert value(got, "serpens_instances", phase="running", **sfc) + \
        value(got, "serpens_instances", phase="sleeping", **sfc) >= 1
    assert value(got, "serpens_instance_starts", **sfc) >= 1
    assert value(got, "serpens_pool_processes", node="local") == 2
    assert value(got, "serpens_router_busy_seconds", node="local") > 0
    tables = {dict(k)["nf"] for k in values(got["serpens_state_capacity_entries"])
              if dict(k)["sfc"] == "fw-mon-nat"}
    assert "nat" in tables
    # counters only grow, and the node's own GetNode agrees with a later scrape
    node = agent.sfcs()["fw-mon-nat"]
    later = scrape(url)
    assert value(later, "serpens_sfc_rx_packets", **sfc) >= node.rx > 0


def test_https_refuses_a_client_without_a_cluster_certificate(cluster):
    _, c_url, _, a_url = cluster
    for url in (c_url, a_url):
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(url, context=tls_context(None), timeout=5).read()
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(url.replace("https", "http"), timeout=5).read()
        assert scrape(url)   # with one, it answers


def test_plain_http_only_on_loopback():
    for prog, extra in (("serpens-controller", []), ("serpens-agent", ["--node", "x.yaml"]),
                        ("serpens-gateway", ["--config", "x.yaml"])):
        out = subprocess.run([os.path.join(BIN, prog), "--insecure", *extra,
                              "--metrics", "0.0.0.0:9999"], capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 2 and "--metrics: 0.0.0.0:9999: plain text" in out.stderr, \
            (prog, out.stderr)


GATEWAY_CONFIG = """
apiVersion: serpens/v1
kind: Gateway
metadata:
  name: gw-metrics
spec:
  ports:
    wan: net_pcap_mwan,rx_pcap={tmp}/in.pcap,infinite_rx=1
    out: net_null_mout,no-rx=1
    fabric: net_null_mfab,no-rx=1
  egress: out
  underlay: {{port: fabric, ip: 10.78.0.1, mtu: 1500}}
  pace: {{wan: 2000}}
"""


def test_the_gateway_s_scrape(etcd, tmp_path):

    wrpcap(str(tmp_path / "in.pcap"), [Ether(flow_frame(f, 0)) for f in range(32)])
    (tmp_path / "gw.yaml").write_text(GATEWAY_CONFIG.format(tmp=tmp_path))
    g_args, url = metrics_args()
    # its own key prefix: the module's controller (another cluster) pushes it nothing
    gw = Gateway(etcd.url, str(tmp_path / "gw.yaml"), args=[*g_args, "--prefix", "/gwm/"])
    try:
        web = RouteRecord(sfc="web", tag=77, vni=3, servers=(
            RouteServer("node1", "10.78.0.11", "02:00:00:00:78:11", 1),
            RouteServer("node2", "10.78.0.12", "02:00:00:00:78:12", 3)))
        gw.stub.SetRoutes(pb.SetRoutesRequest(routes=[web.to_message()], term=1), timeout=10)
        got = wait_until(lambda: (g := scrape(url)) and value(
            g, "serpens_gateway_sfc_tx_packets", gateway="gw-metrics", sfc="web") >= 100 and g,
            20, gw.output)
        check_families(got, GATEWAY)
        assert value(got, "serpens_gateway_port_rx_packets", gateway="gw-metrics",
                     port="wan") >= 100
        assert value(got, "serpens_gateway_sfc_new_flows", gateway="gw-metrics",
                     sfc="web") == 32
        servers = values(got["serpens_gateway_server_tx_packets"])
        assert {(dict(k)["node"], dict(k)["server"]) for k in servers} == {
            ("node1", "10.78.0.11"), ("node2", "10.78.0.12")}
        # the same counters as the gateway's own GetGateway
        status = gw.status()
        again = scrape(url)
        assert value(again, "serpens_gateway_sfc_rx_packets", gateway="gw-metrics",
                     sfc="web") >= status.sfcs["web"].rx > 0
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(url, context=tls_context(None), timeout=5).read()
    finally:
        assert gw.stop() == 0, gw.output()
