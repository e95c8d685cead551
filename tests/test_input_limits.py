"""The spec loaders' bounds (common/documents.py, common/spec.py, common/node_spec.py): size,
YAML anchors and aliases, nesting depth and unknown keys are refused by field before any
Python object is built from the text, fast; every example spec still loads."""
import glob
import json
import os
import time
import tracemalloc

import pytest
import yaml

from serpens.common.documents import load_document
from serpens.common.limits import LIMITS, InputLimits
from serpens.common.node_spec import parse_node
from serpens.common.spec import SpecError, parse_sfc
from serpens.gateway.config import parse_gateway

from support.node_specs import NODE

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MON = "apiVersion: serpens/v1\nkind: SFC\nmetadata: {name: m}\nspec:\n  nfs: {m: {stock: mon}}\n"


def bomb(levels=9):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, field, message", [
    (MON + "  chain: [m]\n" + "#" * LIMITS.spec_bytes, "spec", "at most 65536 bytes"),
    (bomb(), "a0", "anchors and aliases"),
    (MON + "  chain: [m]\n  tag: *x\n", "spec.tag", "anchors and aliases"),
    (MON.replace("{stock: mon}", "&n {stock: mon}") + "  chain: [m]\n", "spec.nfs.m",
     "anchors and aliases"),
    (MON + "  chain: " + "[" * 33 + "m" + "]" * 33 + "\n", "spec.chain" + "[0]" * 30,
     "nested deeper than 32"),
    (MON + "  chain: [m]\n  x:\n" + "".join("  " * (i + 2) + f"k{i}:\n" for i in range(40)),
     "spec.x.k0.k1.k2.k3.k4.k5.k6.k7.k8.k9.k10.k11.k12.k13.k14.k15.k16.k17.k18.k19.k20.k21."
     "k22.k23.k24.k25.k26.k27.k28.k29", "nested deeper than 32"),
    ('{"spec": {"a": [{"b": ' + "[" * 40 + "]" * 40 + "}]}}", "spec.a[0].b" + "[0]" * 28,
     "nested deeper than 32"),
    (MON + "  chain: [m]\nextra: 1\n", "extra", "unknown key"),
    (MON.replace("name: m}", "name: m, labels: {a: b}}") + "  chain: [m]\n", "metadata.labels",
     "unknown key"),
    (MON + "  chain: [m]\n  replicas: 2\n", "spec.replicas", "unknown key"),
    (MON + "  chain: [m]\n  scale: {max: 2, foo: 1}\n", "spec.scale.foo", "unknown key"),
    (MON + "  chain: [m]\n  scale: {max: 1000000000}\n", "spec.scale.max", "1..16"),
    (MON + "  chain: [m]\n  match: [{dst: 10.0.0.0/8, vlan: 3}]\n", "spec.match[0].vlan",
     "unknown key"),
    (MON.replace("{stock: mon}", "{stock: mon, image: x}") + "  chain: [m]\n",
     "spec.nfs.m.image", "unknown key"),
    (MON.replace("{m: {stock: mon}}", "{m: {stock: mon}, n: {stock: mon}}")
     + "  chain: [{distribute: [m, n], weights: [1, 2]}]\n", "spec.chain[0].weights",
     "unknown key"),
    (MON.replace("{m: {stock: mon}}", "{m: {stock: mon}, n: {stock: mon}}")
     + "  chain: [{aggregate: m, then: n}]\n", "spec.chain[0].then", "unknown key"),
    (MON + "  chain: [m]\n  tag: " + "9" * 5000 + "\n", "spec", "not valid YAML or JSON"),
])
def test_bad_documents_are_refused_by_field_fast_and_small(text, field, message):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(SpecError) as e:
            parse_sfc(text)
        took = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.field == field and message in e.value.message, str(e.value)
    assert took < 0.1 and peak < 2 << 20, (took, peak)


def test_a_yaml_alias_bomb_is_refused_before_it_expands():
    text = bomb(12)  # 10**12 scalars once composed
    assert len(text) < 1000
    with pytest.raises(SpecError, match="anchors and aliases"):
        load_document(text)
    with pytest.raises(SpecError, match="anchors and aliases"):
        parse_node(text)


def test_limits_are_settings():
    small = InputLimits(spec_bytes=100, depth=3)
    with pytest.raises(SpecError, match="spec: at most 100 bytes"):
        load_document("a: " + "x" * 100, small)
    with pytest.raises(SpecError, match=r"^a\.b\.c: nested deeper than 3"):
        load_document("a: {b: {c: [1]}}", small)
    assert load_document("a: {b: [1]}", small) == {"a": {"b": [1]}}
    assert load_document(json.dumps({"a": {"b": [1]}}), small) == {"a": {"b": [1]}}


def test_size_counts_utf8_bytes():
    text = MON + "  chain: [m]\n#" + "é" * (LIMITS.spec_bytes // 2)
    assert len(text) < LIMITS.spec_bytes < len(text.encode())
    with pytest.raises(SpecError, match="^spec: at most"):
        parse_sfc(text)


def test_node_configs_refuse_unknown_keys_and_anchors():
    with pytest.raises(SpecError) as e:
        parse_node(NODE.replace("kind: Node", "kind: Node\nstatus: {}"))
    assert e.value.field == "status"
    with pytest.raises(SpecError) as e:
        parse_node(NODE.replace("pool: 2", "pool: &p 2\n  router_cpu: *p"))
    assert e.value.field == "spec.pool"


PARSERS = {"SFC": parse_sfc, "Node": parse_node, "Gateway": parse_gateway}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml"))))
def test_every_example_still_loads(path):
    with open(path) as f:
        docs = list(yaml.safe_load_all(f))
    for doc in docs:
        text = json.dumps(doc)
        if doc["kind"] == "SFC":
            assert parse_sfc(text, base_dir=os.path.dirname(path)).name == doc["metadata"]["name"]
        elif doc["kind"] in PARSERS:
            assert PARSERS[doc["kind"]](text).name == doc["metadata"]["name"]
    if len(docs) == 1:  # as written (YAML), too
        with open(path) as f:
            text = f.read()
        assert PARSERS[docs[0]["kind"]](text).name
