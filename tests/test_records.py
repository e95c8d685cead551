"""The typed etcd records (common/records.py): what one writer encodes every reader decodes
the same, and a value of the wrong shape is refused naming the field, never half-read."""
import json

import pytest

from serpens.common.keys import Keys
from serpens.common.records import (MalformedRecord, NFRecord, NodeLoad, NodeRecord,
                                    ScaleRecord, SFCLoad, SFCRecord, SFCStatus, decode)

pytestmark = pytest.mark.unit

SFC = SFCRecord(name="edge", spec="kind: SFC\n", doc={"kind": "SFC"}, nfs=("mine",),
                generation=3, scale=ScaleRecord(replicas=2, min=1, max=4, target_pps=1000.0,
                                                changed_at=12.5),
                created=1.0, updated=2.0)


def test_each_record_decodes_to_what_was_encoded():
    nf = NFRecord(name="mine", description="d", source="int x;", source_sha256="ab",
                  image_size=4096, created=1.0, updated=1.5)
    status = SFCStatus("Running", node="local", generation=3, instances=2)
    node = NodeRecord(name="local", address="127.0.0.1:1", ports=("lan", "wan"),
                      input=("wan",), pool=4, cpus="0-1", reported_at=9.0,
                      load=NodeLoad(sfcs={"edge": SFCLoad(in_pps=10.5, out_pps=10, instances=1)}))
    for kind, record, name in (("nf", nf, "mine"), ("sfc", SFC, "edge"),
                               ("status", status, "edge"), ("node", node, "local")):
        assert decode(kind, record.encode(), name) == record


def test_an_sfc_without_autoscaling_keeps_no_target_and_scales_keep_other_fields():
    plain = SFCRecord.decode(json.dumps({**SFC.to_dict(), "scale": {"replicas": 1, "min": 1,
                                                                   "max": 1}}), "edge")
    assert plain.scale == ScaleRecord(1, 1, 1) and plain.scale.target_pps is None
    assert "target_pps" not in json.loads(plain.encode())["scale"]
    newer = json.loads(SFC.encode()) | {"added_by_a_newer_version": [1]}
    assert SFCRecord.decode(json.dumps(newer), "edge") == SFC  # unknown fields ignored


@pytest.mark.parametrize("value, error", [
    (b"\xff not json", "not JSON"),
    (b"[1, 2]", "a JSON list, not an object"),
    (json.dumps({**SFC.to_dict(), "name": "other"}), "name: 'other' under the key of 'edge'"),
    (json.dumps({**SFC.to_dict(), "name": 1}), "name: missing or not a string"),
    (json.dumps({k: v for k, v in SFC.to_dict().items() if k != "spec"}),
     "spec: missing or not a string"),
    (json.dumps({**SFC.to_dict(), "generation": True}), "generation: missing or not an integer"),
    (json.dumps({**SFC.to_dict(), "nfs": ["a", 2]}), "nfs: not a list of names"),
    (json.dumps({**SFC.to_dict(), "scale": {"replicas": 1, "min": 1}}),
     "scale.max: missing or not an integer"),
    (json.dumps({**SFC.to_dict(), "scale": {**SFC.scale.to_dict(), "target_pps": "x"}}),
     "scale.target_pps: missing or not a number"),
])
def test_a_malformed_sfc_record_is_refused_naming_what_is_wrong(value, error):
    with pytest.raises(MalformedRecord) as e:
        SFCRecord.decode(value, "edge")
    assert error in str(e.value)


def _sfc_with(**fields):
    return json.dumps({**SFC.to_dict(), **fields})


def _scale_with(**fields):
    return _sfc_with(scale={**SFC.scale.to_dict(), **fields})


@pytest.mark.parametrize("value, error", [
    (_scale_with(replicas=-1), "scale.replicas: -1 is out of range"),
    (_scale_with(max=2 ** 32), "scale.max: 4294967296 is out of range"),
    (_scale_with(min=5, max=4), "scale: min 5 > max 4"),
    (_scale_with(target_pps=float("nan")), "scale.target_pps: nan is not a finite number"),
    (_scale_with(changed_at=float("inf")), "scale.changed_at: inf is not a finite number"),
    (_sfc_with(generation=2 ** 70), "generation: 1180591620717411303424 is out of range"),
    (_sfc_with(generation=-3), "generation: -3 is out of range"),
    (_sfc_with(created=float("-inf")), "created: -inf is not a finite number"),
    (_sfc_with(nfs=["Bad NF"]), "nfs: 'Bad NF' is not a valid NF name"),
])
def test_a_decodable_sfc_record_out_of_range_is_refused(value, error):
    """JSON a hand-written record can hold but no reader can serve (a protobuf int64 or
    uint32, a finite float) is refused like any malformed record."""
    with pytest.raises(MalformedRecord) as e:
        SFCRecord.decode(value, "edge")
    assert error in str(e.value)


def test_a_record_whose_name_is_no_valid_name_is_refused():
    with pytest.raises(MalformedRecord, match="name: 'BadName' is not a valid name"):
        SFCRecord.decode(_sfc_with(name="BadName"), "BadName")
    nf = json.dumps({"name": "x/y", "description": "", "source": "", "source_sha256": "",
                     "image_size": 1, "created": 0, "updated": 0})
    with pytest.raises(MalformedRecord, match="not a valid name"):
        NFRecord.decode(nf, "x/y")
    with pytest.raises(MalformedRecord, match="not a valid name"):
        NodeRecord.decode(b'{"address": "x"}', "UPPER")


def test_status_and_node_numbers_are_checked_too():
    for value in (b'{"phase": "Running", "generation": -1}',
                  b'{"phase": "Running", "instances": 4294967296}'):
        with pytest.raises(MalformedRecord, match="out of range"):
            SFCStatus.decode(value)
    for value, error in ((b'{"address": "x", "pool": -2}', "pool: -2 is out of range"),
                         (b'{"address": ""}', "address: empty"),
                         (b'{"address": "x", "load": {"sfcs": {"e": {"in_pps": NaN}}}}',
                          "load.sfcs.e.in_pps: nan is not a finite number"),
                         (b'{"address": "x", "load": {"ports": {"p": {"rx_pps": -1}}}}',
                          "load.ports.p.rx_pps: -1 is out of range")):
        with pytest.raises(MalformedRecord) as e:
            NodeRecord.decode(value, "a")
        assert error in str(e.value), value


def test_node_records_need_only_an_address_and_are_checked_where_they_say_more():
    assert NodeRecord.decode(b'{"address": "10.0.0.1:7"}', "a") == \
        NodeRecord(name="a", address="10.0.0.1:7")
    for value, error in ((b"{}", "address: missing"), (b"\x00\x01", "not JSON"),
                         (b'{"address": "x", "pool": "4"}', "pool: missing or not an integer"),
                         (b'{"address": "x", "load": {"sfcs": {"e": 3}}}',
                          "load.sfcs.e: not an object"),
                         (b'{"address": "x", "name": "b"}', "name: 'b' under the key of 'a'")):
        with pytest.raises(MalformedRecord) as e:
            NodeRecord.decode(value, "a")
        assert error in str(e.value), value


def test_a_status_takes_defaults_and_becomes_the_api_message():
    st = SFCStatus.decode(b'{"phase": "Pending", "future": 1}')
    assert st == SFCStatus("Pending")
    message = SFCStatus("Failed", "node x: no", "x", 2, 0).to_message()
    assert (message.phase, message.message, message.node, message.generation) == \
        ("Failed", "node x: no", "x", 2)
    with pytest.raises(MalformedRecord, match="instances"):
        SFCStatus.decode(b'{"phase": "Running", "instances": "2"}')


def test_keys_build_and_split_every_record_key():
    keys = Keys("/t/")
    assert (keys.sfc("a"), keys.status("a"), keys.node("n"), keys.nf("f"), keys.leader) == \
        ("/t/sfcs/a", "/t/status/a", "/t/nodes/n", "/t/nfs/f", "/t/leader")
    assert [keys.split(k) for k in (keys.sfc("a"), keys.status("a"), keys.node("n"),
                                     keys.nf("f"), keys.leader)] == \
        [("sfc", "a"), ("status", "a"), ("node", "n"), ("nf", "f"), None]
    with pytest.raises(ValueError):
        Keys("/no-slash")


def test_a_load_report_after_a_counter_reset_is_a_valid_record():
    """An SFC applied again counts from zero: its rate is never negative (a negative one
    made the node record malformed and the node look gone)."""
    from serpens.agent.registration import load_report
    before = {"ports": {"lan": {"rx": 900, "tx": 900}},
              "sfcs": {"s": {"rx": 1000, "out": 1000, "instances": 1}}}
    after = {"ports": {"lan": {"rx": 1000, "tx": 1000}},
             "sfcs": {"s": {"rx": 50, "out": 40, "instances": 1}}}
    load = load_report(before, after, 1.0)
    assert (load.sfcs["s"].in_pps, load.sfcs["s"].out_pps) == (50, 40)
    record = NodeRecord(name="n", address="h:1", ports=("lan",), pool=1, reported_at=1.0,
                        load=load)
    assert NodeRecord.decode(record.encode(), "n").load == load
