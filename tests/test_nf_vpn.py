"""The stock VPN NF (nfs/vpn): ESP tunnel mode with AES-128-GCM, checked by decrypting its
output with scapy's SecurityAssociation (the kernel here has no XFRM) and with the
cryptography package's AES-GCM; sequence numbers come from the shared state table."""
import os
import random
import struct
import subprocess
import threading

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from serpens.nfs import source_path
from serpens.nfs.vpn import CONFIG_LEN, SEQ_TABLE, ConfigError, encode_config
from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.builder import NF_CFLAGS, NF_INCLUDE
from serpens.runtime_cy.sfc import NF, compile_sfc

from scapy.layers.ipsec import ESP, IPSecIntegrityError, SecurityAssociation

from support.harness import PacketHarness
from support.packets import eth

pytestmark = pytest.mark.dataplane

try:  # scapy's ESP AES-GCM runs on the cryptography package
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    HAVE_CRYPTO = True
except ImportError:  # pragma: no cover - then only what needs no decryption runs
    HAVE_CRYPTO = False
needs_crypto = pytest.mark.skipif(not HAVE_CRYPTO, reason="needs the cryptography package "
                                  "(scapy's AES-GCM): pip install cryptography")

KEY = bytes(range(0x10, 0x20))
SALT = bytes.fromhex("a1b2c3d4")
SRC, DST = "192.0.2.1", "198.51.100.7"
STEP = "vpn"  # the SFC step name = the state table namespace

# One SPI per test that counts sequence numbers: tables outlive instances (and test
# sessions, in /dev/shm), so each test resets its SPI's counter first.
SPI_BASIC, SPI_BATCHES, SPI_TWO, SPI_EXHAUST, SPI_MISC, SPI_V6 = 0x1001, 0x1002, 0x1003, 0x1004, 0x1005, 0x1006


def cfg(spi, key=KEY, salt=SALT):
    return {"spi": spi, "key": (key + salt).hex(), "tunnel_src": SRC, "tunnel_dst": DST}


def sa(spi, key=KEY, salt=SALT):
    return SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=key + salt,
                               tunnel_header=IP(src=SRC, dst=DST))


def vpn_nf(build_stock, spi, copy=0):
    return NF(build_stock("vpn", copy=copy), config=encode_config(cfg(spi)), name=STEP)


@pytest.fixture
def seq_table(dataplane):
    """The VPN's sequence-number table as the state manager sees it (created if absent, with
    the NF's own sizes and flags)."""
    t = dp.StateTable(dataplane.config.state_dir, STEP, SEQ_TABLE,
                      dp.GLOBAL | dp.WRITE | dp.EVENTUAL, 4, 8, 256)
    yield t
    t.close()


def set_seq(table, spi, value):
    table.put(struct.pack("!I", spi), struct.pack("<Q", value))


def get_seq(table, spi):
    v = table.get(struct.pack("!I", spi))
    return None if v is None else struct.unpack("<Q", v[:8])[0]


def inner_packets():
    pkts = []
    for size in (1, 2, 3, 4, 5, 6, 7, 13, 64, 100, 255, 511, 1000, 1399, 1400):
        body = bytes((size * 7 + k) & 0xFF for k in range(size))
        pkts.append(IP(src="10.0.0.1", dst="10.0.1.2", tos=0xB8) / UDP(sport=4000, dport=53) / body)
        pkts.append(IP(src="10.0.0.1", dst="10.0.1.2", flags="DF") /
                    TCP(sport=40000, dport=443, flags="PA", seq=size) / body)
        pkts.append(IP(src="10.0.0.3", dst="10.0.1.2") / ICMP(id=size, seq=1) / body)
    return [IP(bytes(p)) for p in pkts]  # with lengths and checksums filled in


def esp_fields(outer: bytes):
    spi, seq = struct.unpack("!II", outer[20:28])
    return spi, seq


def check_outer(outer_ip: bytes, inner: bytes, seq_expected=None, df=None, tos=None):
    o = IP(outer_ip)
    assert o.version == 4 and o.ihl == 5 and o.proto == 50 and o.ttl == 64
    assert o.src == SRC and o.dst == DST
    assert o.len == len(outer_ip)
    fresh = IP(outer_ip)
    del fresh.chksum
    assert IP(bytes(fresh)).chksum == o.chksum  # the header checksum is valid
    if df is not None:
        assert bool(o.flags.DF) == df
    if tos is not None:
        assert o.tos == tos
    # ESP: SPI, seq, IV = 0 || seq, then ciphertext padded to 4 bytes, then a 16-byte ICV
    spi, seq = esp_fields(outer_ip)
    assert outer_ip[28:36] == struct.pack("!Q", seq)
    ct_len = len(outer_ip) - 20 - 16 - 16
    assert ct_len % 4 == 0 and len(inner) + 2 <= ct_len <= len(inner) + 5
    if seq_expected is not None:
        assert seq == seq_expected
    return spi, seq


def plaintext(outer_ip: bytes, key=KEY, salt=SALT) -> bytes:
    """Decrypt with the cryptography package directly: the ESP trailer included."""
    iv = outer_ip[28:36]
    return AESGCM(key).decrypt(salt + iv, outer_ip[36:], outer_ip[20:28])


# ---- configuration -----------------------------------------------------------------------

def test_encode_config_layout():
    b = encode_config(cfg(0xDEADBEEF))
    assert len(b) == CONFIG_LEN
    assert b[:4] == b"\x01\x00\x00\x00"
    assert b[4:8] == bytes.fromhex("deadbeef")
    assert b[8:24] == KEY and b[24:28] == SALT
    assert b[28:32] == bytes([192, 0, 2, 1]) and b[32:36] == bytes([198, 51, 100, 7])


@pytest.mark.parametrize("change, field, text", [
    ({"spi": 255}, "spi", "reserved"),
    ({"spi": 2**32}, "spi", "256.."),
    ({"spi": "4096"}, "spi", "got str"),
    ({"spi": True}, "spi", "got bool"),
    ({"key": "00" * 12}, "key", "20 bytes (16 key + 4 salt) as hex, got 12"),
    ({"key": "00" * 21}, "key", "got 21"),
    ({"key": "zz" * 20}, "key", "non-hex"),
    ({"key": "00 " * 20}, "key", "as hex"),
    ({"key": bytes(20)}, "key", "got bytes"),
    ({"tunnel_src": "10.0.0.256"}, "tunnel_src", "IPv4"),
    ({"tunnel_src": "::1"}, "tunnel_src", "IPv4"),
    ({"tunnel_dst": "224.0.0.1"}, "tunnel_dst", "unicast"),
    ({"tunnel_dst": "0.0.0.0"}, "tunnel_dst", "unicast"),
    ({"tunnel_dst": 3232235777}, "tunnel_dst", "got int"),
    ({"mtu": 1400}, "mtu", "unknown field"),
])
def test_encode_config_names_the_bad_field(change, field, text):
    c = {**cfg(0x1000), **change}
    with pytest.raises(ConfigError) as e:
        encode_config(c)
    assert str(e.value).startswith(f"{field}:") and text in str(e.value)
    assert isinstance(e.value, ValueError)


def test_encode_config_missing_field():
    c = cfg(0x1000)
    del c["tunnel_dst"]
    with pytest.raises(ConfigError, match="^tunnel_dst: missing"):
        encode_config(c)


@pytest.mark.parametrize("mangle", [
    lambda b: b[:-1],                               # short
    lambda b: b + b"\x00",                          # long
    lambda b: b"\x02" + b[1:],                      # version
    lambda b: b[:4] + struct.pack("!I", 255) + b[8:],  # reserved SPI
    lambda b: b[:28] + bytes(4) + b[32:],           # tunnel_src 0.0.0.0
    lambda b: b[:32] + bytes([239, 1, 1, 1]),       # multicast tunnel_dst
])
def test_init_revalidates_the_bytes(pool, build_stock, mangle):
    bad = mangle(encode_config(cfg(SPI_MISC)))
    sfc = compile_sfc(NF(build_stock("vpn"), config=bad, name=STEP))
    with pytest.raises(Exception):
        with PacketHarness(pool, sfc) as h:
            h.run([bytes(eth() / IP() / UDP())])


# ---- AES-GCM known answers (the NF's own code, compiled for the host) --------------------

KAT_MAIN = r"""
#include <stdio.h>
#include <string.h>
#include "%s"
static int unhex(const char *s, uint8_t *o)
{
	int n = (int)strlen(s) / 2;
	for (int i = 0; i < n; i++)
		sscanf(s + 2 * i, "%%2hhx", &o[i]);
	return n;
}
int main(int argc, char **argv) /* key nonce aad plaintext... -> ciphertext||tag per line */
{
	static uint8_t key[16], nonce[12], aad[512], buf[8192];
	for (int a = 1; a + 3 < argc; a += 4) {
		unhex(argv[a], key);
		unhex(argv[a + 1], nonce);
		int al = unhex(argv[a + 2], aad), pl = unhex(argv[a + 3], buf);
		struct gcm_key k;
		gcm_init(&k, key);
		gcm_seal(&k, nonce, aad, al, buf, pl, buf + pl);
		for (int i = 0; i < pl + 16; i++)
			printf("%%02x", buf[i]);
		printf("\n");
	}
	return 0;
}
"""


@pytest.fixture(scope="module")
def gcm_host(tmp_path_factory):
    d = tmp_path_factory.mktemp("vpn_kat")
    (d / "kat.c").write_text(KAT_MAIN % source_path("vpn"))
    flags = [f for f in NF_CFLAGS if f.startswith(("-m", "-I"))]
    subprocess.run([os.environ.get("CC", "gcc"), "-O2", *flags, "kat.c", "-o", "kat"], cwd=d,
                   check=True, capture_output=True)

    def seal(*cases):
        argv = [str(d / "kat")]
        for key, nonce, aad, pt in cases:
            argv += [key.hex(), nonce.hex(), aad.hex(), pt.hex()]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split()
        return [bytes.fromhex(x) for x in out]
    return seal


def test_gcm_nist_vectors(gcm_host):
    # The GCM specification (McGrew & Viega), test cases 1-4: AES-128, 96-bit IV.
    h = bytes.fromhex
    k3, iv3 = h("feffe9928665731c6d6a8f9467308308"), h("cafebabefacedbaddecaf888")
    p3 = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
           "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255")
    c3 = h("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
           "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985")
    a4 = h("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    got = gcm_host((bytes(16), bytes(12), b"", b""),
                   (bytes(16), bytes(12), b"", bytes(16)),
                   (k3, iv3, b"", p3),
                   (k3, iv3, a4, p3[:60]))
    assert got == [h("58e2fccefa7e3061367f1d57a4e7455a"),
                   h("0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf"),
                   c3 + h("4d5c2af327cd64a62cf35abd2ba6fab4"),
                   c3[:60] + h("5bc94fbc3221a5db94fae95ae7121a47")]


@needs_crypto
def test_gcm_matches_cryptography_on_random_inputs(gcm_host):
    rng = random.Random(4106)
    cases = []
    for n in list(range(0, 70)) + [127, 128, 129, 255, 256, 1000, 1500, 4099]:
        cases.append((rng.randbytes(16), rng.randbytes(12), rng.randbytes(rng.choice([0, 8, 12, 16, 20, 40])),
                      rng.randbytes(n)))
    got = gcm_host(*cases)
    for (key, nonce, aad, pt), out in zip(cases, got):
        assert out == AESGCM(key).encrypt(nonce, pt, aad), len(pt)


# ---- packets -----------------------------------------------------------------------------

@needs_crypto
def test_scapy_decrypts_every_packet(pool, build_stock, seq_table):
    set_seq(seq_table, SPI_BASIC, 0)
    inner = inner_packets()
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    frames = [bytes(eth / p) for p in inner]
    with PacketHarness(pool, compile_sfc(vpn_nf(build_stock, SPI_BASIC))) as h:
        results = h.run(frames)
        counters = h.nf_counters()[0]["counters"]
    s = sa(SPI_BASIC)
    for k, (p, r) in enumerate(zip(inner, results)):
        assert r.verdict == "out"
        e = Ether(r.data)
        assert e.src == eth.src and e.dst == eth.dst and e.type == 0x0800
        outer = r.data[14:]
        check_outer(outer, bytes(p), seq_expected=k + 1, df=bool(p.flags.DF), tos=p.tos)
        dec = s.decrypt(IP(outer))
        assert bytes(dec) == bytes(p)
        # the trailer: padding 1, 2, 3, ..., pad length, next header 4
        pt = plaintext(outer)
        pad = pt[-2]
        assert pt[:len(bytes(p))] == bytes(p) and pt[-1] == 4
        assert pt[len(bytes(p)):-2] == bytes(range(1, pad + 1)) and len(pt) % 4 == 0
        assert IP(outer).id == (k + 1) & 0xFFFF
    assert counters["encrypted"] == len(frames)
    assert get_seq(seq_table, SPI_BASIC) == len(frames)


@needs_crypto
def test_vlan_ethernet_padding_and_ipv6_inner(pool, build_stock, seq_table):
    set_seq(seq_table, SPI_V6, 0)
    v4 = IP(bytes(IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=1, dport=2) / b"x"))
    v6 = IPv6(bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0x28) / UDP(sport=5, dport=6) /
                    bytes(range(200))))
    frames = [
        bytes(eth() / v4) + bytes(20),                  # Ethernet padding after the IP packet
        bytes(eth() / Dot1Q(vlan=42) / v4),             # VLAN tag kept
        bytes(eth() / v6),
    ]
    with PacketHarness(pool, compile_sfc(vpn_nf(build_stock, SPI_V6))) as h:
        results = h.run(frames)
    assert [r.verdict for r in results] == ["out"] * 3
    s = sa(SPI_V6)
    out0 = results[0].data[14:]
    check_outer(out0, bytes(v4))
    assert bytes(s.decrypt(IP(out0))) == bytes(v4)
    e = Ether(results[1].data)
    assert e.type == 0x8100 and e[Dot1Q].vlan == 42 and e[Dot1Q].type == 0x0800
    out1 = results[1].data[18:]
    check_outer(out1, bytes(v4))
    assert bytes(s.decrypt(IP(out1))) == bytes(v4)
    e = Ether(results[2].data)
    assert e.type == 0x0800
    out2 = results[2].data[14:]
    check_outer(out2, bytes(v6), df=True, tos=0x28)
    assert plaintext(out2)[-1] == 41
    assert bytes(s.decrypt(IP(out2))) == bytes(v6)


def test_sequence_numbers_rise_across_batches(pool, build_stock, seq_table):
    set_seq(seq_table, SPI_BATCHES, 0)
    frame = bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"hello")
    seqs = []
    with PacketHarness(pool, compile_sfc(vpn_nf(build_stock, SPI_BATCHES))) as h:
        for n in (1, 5, 31, 32, 33, 100, 7):
            results = h.run([frame] * n)
            assert all(r.verdict == "out" for r in results)
            seqs += [esp_fields(r.data[14:])[1] for r in results]
    assert seqs == list(range(1, len(seqs) + 1))
    # a restarted instance goes on where the last one stopped
    with PacketHarness(pool, compile_sfc(vpn_nf(build_stock, SPI_BATCHES))) as h:
        more = [esp_fields(r.data[14:])[1] for r in h.run([frame] * 3)]
    assert more == [len(seqs) + 1, len(seqs) + 2, len(seqs) + 3]


def test_two_instances_never_share_a_sequence_number(pool, build_stock, seq_table):
    set_seq(seq_table, SPI_TWO, 0)
    n = 3000
    frames = [bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=i & 0xFFFF) /
                    bytes(i % 50)) for i in range(n)]
    out = {}
    errors = []
    barrier = threading.Barrier(2)
    harnesses = [PacketHarness(pool, compile_sfc(vpn_nf(build_stock, SPI_TWO, copy=c)))
                 for c in (0, 1)]

    def run(k):
        try:
            barrier.wait()
            out[k] = harnesses[k].run(frames, timeout=60)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        for hh in harnesses:
            hh.start()
        threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for hh in harnesses:
            hh.close()
    assert not errors
    s = sa(SPI_TWO) if HAVE_CRYPTO else None
    seqs = []
    for k in (0, 1):
        mine = [esp_fields(r.data[14:])[1] for r in out[k]]
        assert mine == sorted(mine) and len(set(mine)) == n  # rising within an instance
        seqs += mine
        for f, r in zip(frames[::97], out[k][::97]):
            if HAVE_CRYPTO:
                assert bytes(s.decrypt(IP(r.data[14:]))) == f[14:]
    assert len(set(seqs)) == 2 * n           # no number twice
    assert sorted(seqs) == list(range(1, 2 * n + 1))  # no number lost either
    assert get_seq(seq_table, SPI_TWO) == 2 * n


def test_sequence_numbers_never_wrap(pool, build_stock, seq_table):
    set_seq(seq_table, SPI_EXHAUST, 2**32 - 4)
    frame = bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"last")
    with PacketHarness(pool, compile_sfc(vpn_nf(build_stock, SPI_EXHAUST))) as h:
        first = h.run([frame] * 10)
        second = h.run([frame] * 5)
        counters = h.nf_counters()[0]["counters"]
    assert [r.verdict for r in first] == ["out"] * 3 + ["drop"] * 7
    assert [esp_fields(r.data[14:])[1] for r in first[:3]] == [2**32 - 3, 2**32 - 2, 2**32 - 1]
    if HAVE_CRYPTO:
        assert bytes(sa(SPI_EXHAUST).decrypt(IP(first[2].data[14:]))) == frame[14:]
    assert all(r.verdict == "drop" for r in second)
    assert counters["seq_exhausted"] == 12 and counters["encrypted"] == 3
    assert get_seq(seq_table, SPI_EXHAUST) < 2**32 + 64  # stopped taking numbers


def test_non_ip_malformed_and_too_big_are_dropped_and_counted(pool, build_stock, seq_table):
    set_seq(seq_table, SPI_MISC, 0)
    good = bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"ok")
    bad_ip = bytearray(good)
    bad_ip[14] = 0x43  # IHL 3
    truncated = bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / bytes(100))[:60]
    frames = [
        bytes(eth() / ARP()),                   # non-IP
        b"\x00" * 10,                             # not even Ethernet
        bytes(bad_ip),                            # bad IP header
        truncated,                                # IP total length past the frame
        good,
        bytes(eth() / IP() / UDP() / bytes(2040 - 42)),  # no tailroom for the trailer
        bytes(eth() / IP() / UDP() / bytes(1958)),       # just fits (2000 + 56 bytes)
        good,
    ]
    with PacketHarness(pool, compile_sfc(vpn_nf(build_stock, SPI_MISC))) as h:
        results = h.run(frames)
        c = h.nf_counters()[0]["counters"]
    assert [r.verdict for r in results] == ["drop"] * 4 + ["out", "drop", "out", "out"]
    assert c["dropped_non_ip"] == 4 and c["too_big"] == 1 and c["encrypted"] == 3
    assert c["seq_exhausted"] == 0
    # drops take no sequence numbers
    assert [esp_fields(r.data[14:])[1] for r in results if r.verdict == "out"] == [1, 2, 3]
    if HAVE_CRYPTO:
        assert bytes(sa(SPI_MISC).decrypt(IP(results[6].data[14:]))) == frames[6][14:]


@needs_crypto
def test_wrong_key_does_not_decrypt(pool, build_stock, seq_table):
    set_seq(seq_table, SPI_MISC, 0)
    frame = bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"secret")
    with PacketHarness(pool, compile_sfc(vpn_nf(build_stock, SPI_MISC))) as h:
        (r,) = h.run([frame])
    assert b"secret" not in r.data
    with pytest.raises(IPSecIntegrityError):
        sa(SPI_MISC, salt=b"\x00\x00\x00\x00").decrypt(IP(r.data[14:]))
    tampered = bytearray(r.data[14:])
    tampered[40] ^= 1
    with pytest.raises(IPSecIntegrityError):
        sa(SPI_MISC).decrypt(IP(bytes(tampered)))
