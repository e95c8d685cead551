"""Parse once per packet for the whole SFC (nf.h ABI 1.3): the first NF that reads a packet's
headers parses them into the batch, the NFs after it read that, and an NF that rewrites
headers invalidates them, so no NF ever reads fields older than the packet's bytes.

Test NFs, built from the sources below: `see` writes the UDP destination port it reads through
serpens_hdrs() into the payload (slot = its config byte), `setport` rewrites that port in place
(three ways: declaring SERPENS_HDRS_KEPT and invalidating, as an NF must; declaring nothing, as
NFs before ABI 1.3; declaring KEPT but not invalidating: the broken NF that shows the headers
really are parsed once and not again)."""
import itertools
import struct

import pytest
from scapy.layers.inet import IP, UDP

from serpens.agent.process_pool import PoolError
from serpens.nfs import fw, nat
from serpens.runtime_cy.builder import build_nf
from serpens.runtime_cy.sfc import NF, chain, compile_sfc

from support.harness import PacketHarness
from support.packets import eth

pytestmark = pytest.mark.dataplane

SEE = r"""
#include <serpens/nf.h>
static uint8_t slot;
static int init(struct serpens_ctx *c, const void *cfg, uint32_t n)
{ (void)c; if (n != 1) return -22; slot = *(const uint8_t *)cfg; return 0; }
static void process(struct serpens_ctx *c, struct serpens_batch *b)
{
	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		const struct serpens_hdrs *h;
		if (serpens_hdrs(c, b, i, &h) != SERPENS_PARSE_OK || h->payload_len < 8) {
			serpens_drop(b, i);
			continue;
		}
		memcpy(b->data[i] + h->payload_off + 2 * slot, &h->flow.dport, 2);
	}
}
SERPENS_NF(.name = "see", .init = init, .process = process, .hdrs = SERPENS_HDRS_KEPT);
"""

SETPORT = r"""
#include <serpens/nf.h>
static void process(struct serpens_ctx *c, struct serpens_batch *b)
{
	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		struct serpens_hdrs h; /* its own parse: what the bytes say now */
		if (c->api->parse(b->data[i], b->len[i], &h) != SERPENS_PARSE_OK)
			continue;
		uint16_t port = serpens_htons(4242);
		memcpy(b->data[i] + h.l4_off + 2, &port, 2);
		INVALIDATE
	}
}
SERPENS_NF(.name = "setport", .process = process DECLARE);
"""

SETPORTS = {  # how the rewriting NF behaves: (invalidates, declares SERPENS_HDRS_KEPT)
    "kept": ("serpens_hdrs_invalidate(b, i);", ", .hdrs = SERPENS_HDRS_KEPT"),
    "legacy": ("", ""),
    "lying": ("", ", .hdrs = SERPENS_HDRS_KEPT"),
}

# Counts each packet's flow in a per-flow table looked up in bulk by &h->flow (its hash known
# once per SFC) and writes the count into the payload (slot = config byte 0); with config byte
# 1 set, each bulk lookup also carries a key that is not a packet's flow. A missed lookup
# puts 1: a lookup under a stale hash misses, and the count starts over.
COUNT = r"""
#include <serpens/nf.h>
static uint8_t slot, mixed;
static int t;
static int init(struct serpens_ctx *c, const void *cfg, uint32_t n)
{
	if (n != 2)
		return -22;
	slot = ((const uint8_t *)cfg)[0];
	mixed = ((const uint8_t *)cfg)[1];
	t = c->api->create_table(c, "seen", SERPENS_PER_FLOW | SERPENS_READ | SERPENS_WRITE,
				 sizeof(struct serpens_flow), 8, 1024);
	return t < 0 ? t : 0;
}
static void process(struct serpens_ctx *c, struct serpens_batch *b)
{
	const void *keys[SERPENS_BURST + 1];
	void *vals[SERPENS_BURST + 1];
	uint8_t at[SERPENS_BURST];
	struct serpens_flow other;
	uint32_t n = 0;
	for (uint32_t k = 0; k < b->count; k++) {
		const struct serpens_hdrs *h;
		if (serpens_hdrs(c, b, b->idx[k], &h) != SERPENS_PARSE_OK)
			continue;
		keys[n] = &h->flow;
		at[n++] = b->idx[k];
	}
	memset(&other, 0, sizeof(other));
	other.family = 4;
	keys[n] = &other;
	c->api->get_state_bulk(c, t, keys, n + (mixed && n < SERPENS_BURST), vals);
	for (uint32_t j = 0; j < n; j++) {
		uint64_t one = 1, *v = vals[j];
		uint16_t count = v ? (uint16_t)++*v : 1;
		if (!v)
			c->api->put_state(c, t, keys[j], &one, (void **)0);
		const struct serpens_hdrs *h;
		serpens_hdrs(c, b, at[j], &h);
		count = serpens_htons(count);
		memcpy(b->data[at[j]] + h->payload_off + 2 * slot, &count, 2);
	}
}
SERPENS_NF(.name = "count", .init = init, .process = process, .hdrs = SERPENS_HDRS_KEPT);
"""

FUTURE = r"""
#include <serpens/nf.h>
static void process(struct serpens_ctx *c, struct serpens_batch *b) { (void)c; (void)b; }
static const struct serpens_nf_ops ops = {
	.abi_major = SERPENS_ABI_MAJOR, .abi_minor = SERPENS_ABI_MINOR + 1,
	.size = sizeof(struct serpens_nf_ops), .name = "future", .process = process};
__attribute__((visibility("default"))) const struct serpens_nf_ops *nf_entry(void)
{ return &ops; }
"""

_ids = itertools.count()


@pytest.fixture(scope="module")
def images(areas):
    built = {"see0": build_nf(SEE, areas.allocate(), "see"),
             "see1": build_nf(SEE, areas.allocate(), "see"),
             "future": build_nf(FUTURE, areas.allocate(), "future"),
             **{f"count{k}": build_nf(COUNT, areas.allocate(), "count") for k in range(3)}}
    for kind, (inval, declare) in SETPORTS.items():
        src = SETPORT.replace("INVALIDATE", inval).replace("DECLARE", declare)
        built[kind] = build_nf(src, areas.allocate(), "setport")
    yield built
    for img in built.values():
        img.close()


def frame(dport: int) -> bytes:
    return bytes(eth() / IP(src="10.0.0.1", dst="10.9.9.9") / UDP(sport=1000, dport=dport)
                 / bytes(8))


def seen(data: bytes) -> tuple[int, int]:
    """The ports `see` slot 0 and slot 1 wrote into the payload."""
    return struct.unpack_from("!HH", data, 14 + 20 + 8)


@pytest.mark.parametrize("kind,after", [("kept", 4242), ("legacy", 4242), ("lying", 53)])
def test_an_nf_after_a_rewrite_reads_the_new_headers(pool, images, kind, after):
    """see -> setport -> see: the first `see` parses (and caches) every packet; after an NF
    that invalidates, or one that declares nothing, the second reads the rewritten port. The
    NF that declares KEPT without invalidating leaves the cached (old) port: the second `see`
    read the first one's parse, not the packet again."""
    sfc = compile_sfc(chain(NF(images["see0"], config=b"\x00", name="see0"),
                            NF(images[kind], name="setport"),
                            NF(images["see1"], config=b"\x01", name="see1")))
    with PacketHarness(pool, sfc) as h:
        results = h.run([frame(53)] * 70)  # three batches' worth and more
    assert all(r.verdict == "out" for r in results)
    assert {seen(r.data) for r in results} == {(53, after)}
    assert {struct.unpack_from("!H", r.data, 36)[0] for r in results} == {4242}


def test_flow_lookups_after_a_rewrite_hash_the_new_flow(pool, images):
    """count -> setport -> count (its lookups mixed with another key) -> count: each NF
    looks up the same packets' flows (the same &h->flow); after the rewrite they are other
    flows and are hashed again, never looked up under the hash of the flow before (a stale
    hash misses, and that NF's count would start over each batch)."""
    tag = next(_ids)
    sfc = compile_sfc(chain(NF(images["count0"], config=b"\x00\x00", name=f"count0-{tag}"),
                            NF(images["kept"], name="setport"),
                            NF(images["count1"], config=b"\x01\x01", name=f"count1-{tag}"),
                            NF(images["count2"], config=b"\x02\x00", name=f"count2-{tag}")))
    with PacketHarness(pool, sfc) as h:
        counts = []
        for _ in range(3):  # a batch each: three flows, two packets of the first
            results = h.run([frame(53), frame(54), frame(53), frame(55)])
            assert all(r.verdict == "out" for r in results)
            counts.append([struct.unpack_from("!HHH", r.data, 14 + 20 + 8) for r in results])
    # Before the rewrite, flows 53 (two packets), 54 and 55; after it, one flow (every port
    # 4242). A batch's lookups come before its puts, so its first batch counts 1 throughout.
    before = [[1, 1, 1, 1], [2, 2, 3, 2], [4, 3, 5, 3]]
    after = [[1, 1, 1, 1], [2, 3, 4, 5], [6, 7, 8, 9]]
    for batch, b, a in zip(counts, before, after):
        assert batch == [(x, y, y) for x, y in zip(b, a)]


def test_malformed_frames_are_dropped_by_the_parsing_nf_and_counted(pool, images):
    sfc = compile_sfc(chain(NF(images["see0"], config=b"\x00", name="see0"),
                            NF(images["see1"], config=b"\x01", name="see1")))
    bad = [b"\x00" * 10, frame(53)[:30], frame(53)[:40]]
    with PacketHarness(pool, sfc) as h:
        results = h.run(bad + [frame(53)])
        counters = h.nf_counters()
    assert [r.verdict for r in results] == ["drop", "drop", "drop", "out"]
    assert seen(results[3].data) == (53, 53)
    assert (counters[0]["in"], counters[0]["dropped"], counters[1]["in"]) == (4, 3, 1)


def test_an_nf_built_for_a_newer_abi_is_refused_by_name(pool, images):
    sfc = compile_sfc(NF(images["future"], name="future"))
    with pytest.raises(PoolError, match=r"step 0 \(future\): built for NF ABI 1\.\d+, "
                                        r"this runtime has 1\.\d+"):
        with PacketHarness(pool, sfc):
            pass


def test_fw_after_nat_decides_on_the_translated_packet(pool, build_stock):
    """NAT -> FW under parse once: the firewall allows only the NAT's external address and
    port range, so every packet it lets through was judged on the translated headers (stale
    ones, 10.0.0.x:1000, are denied by the default)."""
    tag = next(_ids)
    nat_nf = NF(build_stock("nat"), name=f"nat-po-{tag}", config=nat.encode_config({
        "internal": "10.0.0.0/8", "external_ips": ["192.0.2.1"], "port_range": "40000-40063",
        "idle_timeout": 300, "max_flows": 1024}))
    fw_nf = NF(build_stock("fw"), name=f"fw-po-{tag}", config=fw.encode_config({
        "default": "deny",
        "rules": [{"action": "allow", "src": "192.0.2.1/32", "proto": "udp",
                   "sport": "40000-40063"}]}))
    frames = [bytes(eth() / IP(src=f"10.0.0.{i % 16 + 1}", dst="198.51.100.7")
                    / UDP(sport=1000, dport=53) / b"query") for i in range(96)]
    with PacketHarness(pool, compile_sfc(chain(nat_nf, fw_nf))) as h:
        results = h.run(frames)
        nat_c, fw_c = (c["counters"] for c in h.nf_counters())
    assert all(r.verdict == "out" for r in results)
    for r in results:
        p = IP(r.data[14:])
        assert p.src == "192.0.2.1" and 40000 <= p[UDP].sport <= 40063
    assert nat_c["translated_out"] == 96
    assert (fw_c["allowed"], fw_c["denied"]) == (96, 0)
    # verdicts cached for the translated flows (16) served the later batches
    assert fw_c["cache_hits"] > 0
