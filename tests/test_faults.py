"""Fault injection (issue 11): real NFs that misbehave beside FW->MON->NAT on one node under
paced traffic, through bench/faults.py, the same code `serpensctl bench faults` runs. The
scenarios run one after another in one server process (DPDK's primary is once per process):
a fresh node and pool each, on one DPDK primary (tests/support/fault_scenarios.py). The
healthy SFC must keep its packets, the faulty one's status must name the fault, and the node
must live on and close cleanly (and the primary serve the next scenario)."""
import pytest

from support.fault_scenarios import ScenarioServer

pytestmark = pytest.mark.dataplane


@pytest.fixture(scope="module")
def server():
    s = ScenarioServer(pps=50_000)
    yield s
    code, errors = s.close()
    assert code in (None, 0), errors


@pytest.fixture
def scenario(server):
    def run(kind: str, seconds: float = 2.0, restarts: int = 5, window_s: float = 60.0,
            alone_s: float = 2.0) -> dict:
        # the healthy SFC measured alone for alone_s, once its packets leave and 0.3 s more
        return server.run(kind=kind, seconds=seconds, restarts=restarts, window_s=window_s,
                          alone_s=alone_s, settle=0.3)
    return run


def assert_healthy_untouched(r: dict):
    assert r["router_alive"], r
    assert r["healthy_kept"] >= 0.99, r
    assert r["healthy_forwarded"] >= 0.99, r  # of what the healthy SFC received meanwhile
    offered = r["healthy_out_pps"]["alone"] * 2
    assert r["missed"]["beside_faulty"] <= 0.01 * offered, r  # RX never stopped for long


def assert_named_in_time(r: dict, *words):
    assert r["crashes"] >= 1, r
    assert r["phase"] in ("Degraded", "Failed"), r
    for w in ("'faulty.bad'", *words):
        assert w in r["message"], r
    assert r["detect_ms"]["p99"] < 2000, r


def test_a_null_dereference_crash_loop_fails_the_sfc_and_spares_the_other(scenario):
    r = scenario("null", restarts=5)
    assert_healthy_untouched(r)
    assert_named_in_time(r, "SIGSEGV", "at address 0x0")
    # six crashes in the window: Failed, its packets dropped (counted), no more restarts
    assert r["phase"] == "Failed" and r["crashes"] == 6, r
    assert r["drops"]["sfc_failed"] > 0 and r["drops"]["instance_died"] > 0, r
    assert {"Degraded", "Failed"} <= set(r["phases_seen"]), r


def test_reading_1_mib_past_the_packet_harms_only_its_own_sfc(scenario):
    r = scenario("overread")
    assert_healthy_untouched(r)
    if r["crashes"]:  # past the end of what is mapped: a fault, named
        assert_named_in_time(r)
        assert "SIGSEGV" in r["message"] or "SIGBUS" in r["message"], r


def test_an_nf_that_never_returns_is_killed_by_the_watchdog(scenario):
    r = scenario("loop")
    assert_healthy_untouched(r)
    assert_named_in_time(r, "SIGKILL by the watchdog", "10 ms")


def test_a_system_call_from_an_nf_is_refused_and_writes_nothing(scenario):
    r = scenario("syscall")
    assert_healthy_untouched(r)
    assert_named_in_time(r, "SIGSYS", "refused by the sandbox")
    assert not r["file_written"], r


def test_killing_a_busy_pool_process_20_times_spares_the_other_sfc(scenario):
    r = scenario("kill", seconds=8.0, restarts=1000, window_s=1.0)
    assert_healthy_untouched(r)
    assert r["kills"] == 20, r
    assert r["crashes"] >= 20, r  # every death seen
    if r["phase"] != "Running":  # (within its 1 s window: the status says what happened)
        assert "killed" in r["message"] or "SIGKILL" in r["message"], r


def test_an_sfc_waiting_for_a_pool_process_never_stops_the_node(scenario):
    """The pool is all the healthy SFC's: the other one's packets wait at most hold_ms, then
    are dropped and counted; its status says why; the healthy SFC keeps its packets."""
    r = scenario("starve")
    assert_healthy_untouched(r)
    assert r["crashes"] == 0, r
    assert r["drops"]["no_instance"] > 0, r
    assert "no instance" in r["message"] and "busy" in r["message"], r
