"""NF builder, verifier and image loader (runtime_cy/builder.py, runtime_cy/src/nf_image.c).

Mapping happens only in child processes: the test process may hold a DPDK primary whose
extension has reserved the NF region already, and a bad mapping must not take pytest down.
"""
import fcntl
import json
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from serpens.runtime_cy import _image
from serpens.runtime_cy.builder import (
    NF_CACHE_ENV, NF_CFLAGS, NF_LDFLAGS, NF_MEM_SOURCE, NF_REGION_BASE, NF_AREA_SIZE, NF_AREAS,
    NFBuildError, NFImage, NFRefusedError, AreaAllocator, build_nf, compile_nf, prepare_image,
    area_base, verify_nf,
)

pytestmark = pytest.mark.unit

NFS = Path(__file__).parent / "nfs"
PAGE = 4096
ALL_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def source(name):
    return (NFS / f"{name}.c").read_text()


@pytest.fixture(scope="module")
def pass_so():
    return compile_nf(source("pass"), name="pass")


@pytest.fixture(scope="module")
def big_so():
    return compile_nf(source("big_globals"), name="big_globals")


# -- accepted and refused NFs -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["pass", "big_globals"])
def test_accepts(name):
    so = compile_nf(source(name), name=name)
    assert so[:4] == b"\x7fELF"
    verify_nf(so)


@pytest.mark.parametrize("name, expect", [
    ("bad_libc", ["printf", "malloc", "undefined symbol"]),
    ("bad_tls", ["TLS"]),
    ("bad_abs_extern", ["platform_table"]),
    ("bad_ctor", ["DT_INIT_ARRAY", "constructor"]),
    ("bad_export", ["helper", "nf_entry"]),
])
def test_refuses(name, expect):
    so = compile_nf(source(name), name=name)
    with pytest.raises(NFRefusedError) as ei:
        verify_nf(so)
    for word in expect:
        assert word in str(ei.value)
    # prepare refuses the same way, and creates nothing
    with pytest.raises(NFRefusedError):
        prepare_image(so, 0, name)


def test_build_error_names_file_and_line():
    with pytest.raises(NFBuildError) as ei:
        compile_nf(source("bad_syntax"), name="bad_syntax")
    out = ei.value.output
    assert "error:" in out
    assert "bad_syntax.c:8:" in out
    assert "int x = ;" in out
    assert "bad_syntax.c:8:" in str(ei.value)


def test_bad_name_rejected():
    with pytest.raises(ValueError):
        compile_nf(source("pass"), name="../evil")


def _link_with(extra, name="pass"):
    """Link tests/nfs/<name>.c with the NF flags plus `extra` linker arguments."""
    with tempfile.TemporaryDirectory() as tmp:
        so = os.path.join(tmp, "x.so")
        subprocess.run(["gcc", *NF_CFLAGS, "-c", str(NFS / f"{name}.c"), "-o",
                        os.path.join(tmp, "nf.o")], check=True)
        subprocess.run(["gcc", *NF_CFLAGS, "-fno-builtin", "-c", str(NF_MEM_SOURCE), "-o",
                        os.path.join(tmp, "mem.o")], check=True)
        subprocess.run(["gcc", *NF_LDFLAGS, os.path.join(tmp, "nf.o"), os.path.join(tmp, "mem.o"),
                        *extra, "-o", so], check=True)
        return Path(so).read_bytes()


def test_refuses_needed_library():
    so = _link_with(["-Wl,--no-as-needed", "-lc"])
    with pytest.raises(NFRefusedError, match=r"DT_NEEDED 'libc\.so\.6'"):
        verify_nf(so)


def _elf_dynsym(so):
    """(file offset of .dynsym, number of entries, file offset of .dynstr) via PT_DYNAMIC."""
    phoff, = struct.unpack_from("<Q", so, 32)
    phnum, = struct.unpack_from("<H", so, 56)
    loads, dyn = [], None
    for i in range(phnum):
        p_type, _, p_off, p_va, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", so,
                                                                       phoff + 56 * i)
        if p_type == 1:
            loads.append((p_va, p_off, p_filesz))
        elif p_type == 2:
            dyn = (p_off, p_filesz)

    def off(va):
        return next(o + va - v for v, o, n in loads if v <= va < v + n)

    tags = {}
    for k in range(dyn[1] // 16):
        tag, val = struct.unpack_from("<qQ", so, dyn[0] + 16 * k)
        tags.setdefault(tag, val)
    symtab, strtab = off(tags[6]), off(tags[5])
    return symtab, (strtab - symtab) // 24, strtab


def test_refuses_relocation_naming_type_and_symbol():
    # Turn bad_abs_extern's undefined platform_table into a defined hidden symbol: the
    # verifier then gets to its R_X86_64_64 relocation and must name it.
    so = bytearray(compile_nf(source("bad_abs_extern"), name="bad_abs_extern"))
    symtab, nsyms, strtab = _elf_dynsym(so)
    for i in range(1, nsyms):
        st_name, st_info, st_other, st_shndx = struct.unpack_from("<IBBH", so, symtab + 24 * i)
        if so[strtab + st_name:].startswith(b"platform_table\0"):
            struct.pack_into("<IBBH", so, symtab + 24 * i, st_name, st_info, 2, 5)
            break
    else:
        pytest.fail("platform_table not in .dynsym")
    with pytest.raises(NFRefusedError) as ei:
        verify_nf(bytes(so))
    msg = str(ei.value)
    assert "R_X86_64_64" in msg and "'platform_table'" in msg and "R_X86_64_RELATIVE" in msg


def test_refuses_non_elf():
    for junk in [b"", b"\x7fELF", b"hello world" * 100, bytes(4096)]:
        with pytest.raises(NFRefusedError):
            verify_nf(junk)


def test_fuzz_truncated_and_corrupted(pass_so, big_so):
    """500 damaged images: each is refused or accepted, never crashes the verifier."""
    rng = random.Random(0x5E4BE25)
    cases = []
    for so in (pass_so, big_so):
        cases += [so[:n] for n in range(0, len(so), max(1, len(so) // 100))][:100]
    # Damage the structures the verifier reads most: headers, .dynsym, .gnu.hash, PT_DYNAMIC.
    hot = 0x400
    while len(cases) < 500:
        so = bytearray(rng.choice((pass_so, big_so)))
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(hot) if rng.random() < 0.7 else rng.randrange(len(so))
            if rng.random() < 0.5:
                so[pos] ^= 1 << rng.randrange(8)
            else:
                so[pos] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        cases.append(bytes(so))
    accepted = 0
    for so in cases:
        try:
            verify_nf(so)
        except NFRefusedError as e:
            assert str(e)
            continue
        accepted += 1
        fd, layout = _image.prepare(so, area_base(1))  # must not crash either
        os.close(fd)
    assert accepted < len(cases)


# -- compiled objects shared between processes (SERPENS_NF_CACHE_DIR) ---------------------------

_COMPILE_STDIN = ("import sys; from serpens.runtime_cy.builder import compile_nf; "
                  "sys.stdout.buffer.write(compile_nf(sys.stdin.read(), name='pass'))")


def test_processes_share_compiled_nfs_through_the_cache_directory(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    src = source("pass") + f"/* {tmp_path}: a source no process compiled yet */\n"

    def compile_in_a_new_process():
        return subprocess.run([sys.executable, "-c", _COMPILE_STDIN], input=src.encode(),
                              env={**os.environ, NF_CACHE_ENV: str(cache)},
                              capture_output=True, check=True).stdout

    first = compile_in_a_new_process()
    assert first[:4] == b"\x7fELF"
    [kept] = cache.glob("*.so")
    assert kept.read_bytes() == first and not list(cache.glob(".*"))  # no temporary left
    # the next process takes the object from there (shown by another one put in its place)
    other = compile_nf(source("big_globals"), name="big_globals")
    kept.write_bytes(other)
    assert compile_in_a_new_process() == other


def test_a_failed_build_is_not_kept(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    monkeypatch.setenv(NF_CACHE_ENV, str(cache))
    for _ in range(2):  # compiled (and refused) each time
        with pytest.raises(NFBuildError, match=r"bad_syntax\.c:\d+"):
            compile_nf(source("bad_syntax") + f"/* {tmp_path} */\n", name="bad_syntax")
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("mode", [0o755, 0o770], ids=["0755", "0770"])
def test_a_cache_directory_others_can_use_is_refused(tmp_path, monkeypatch, mode):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(mode)
    monkeypatch.setenv(NF_CACHE_ENV, str(cache))
    with pytest.raises(NFBuildError, match=r"SERPENS_NF_CACHE_DIR=.*mode 0700"):
        compile_nf(source("pass") + f"/* {tmp_path} */\n", name="pass")
    monkeypatch.setenv(NF_CACHE_ENV, str(tmp_path / "missing"))
    with pytest.raises(NFBuildError, match=r"SERPENS_NF_CACHE_DIR=.*missing: No such file"):
        compile_nf(source("pass") + f"/* {tmp_path} */\n", name="pass")
    assert list(cache.iterdir()) == []


# -- images ------------------------------------------------------------------------------------

def test_prepare_places_and_seals(pass_so):
    with prepare_image(pass_so, 5, "pass") as img:
        assert isinstance(img, NFImage)
        assert img.base == area_base(5) == NF_REGION_BASE + 5 * NF_AREA_SIZE
        assert img.layout == (img.base, img.text_len, img.relro_len, img.data_len, img.entry_off)
        for n in (img.text_len, img.relro_len, img.data_len):
            assert n % PAGE == 0
        assert img.text_len > 0 and img.data_len > 0
        assert 0 < img.entry_off < img.text_len
        st = os.fstat(img.fd)
        assert st.st_size == img.size <= NF_AREA_SIZE
        assert fcntl.fcntl(img.fd, fcntl.F_GET_SEALS) & ALL_SEALS == ALL_SEALS
        assert fcntl.fcntl(img.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        with pytest.raises(PermissionError):
            os.pwrite(img.fd, b"x", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(img.fd, img.size * 2)
        # text is the ELF's first PT_LOAD, at file offset 0
        assert os.pread(img.fd, 4, 0) == b"\x7fELF"
        fd = img.fd
    assert img.closed
    img.close()  # idempotent
    with pytest.raises(OSError):
        os.fstat(fd)


def test_relocated_for_area(big_so):
    """The same object prepared for two areas differs exactly in the relocated words."""
    with prepare_image(big_so, 1, "a") as a, prepare_image(big_so, 2, "b") as b:
        ta, tb = os.pread(a.fd, a.size, 0), os.pread(b.fd, b.size, 0)
        assert ta[:a.text_len] == tb[:b.text_len]
        diffs = [i for i in range(0, a.size, 8) if ta[i:i + 8] != tb[i:i + 8]]
        assert len(diffs) >= 15  # big_globals has 15 RELATIVE relocations
        for i in diffs:
            va, vb = struct.unpack_from("<Q", ta, i)[0], struct.unpack_from("<Q", tb, i)[0]
            assert va - a.base == vb - b.base < a.size


def test_build_nf(tmp_path):
    with build_nf(source("pass"), 7, "pass") as img:
        assert img.name == "pass" and img.area == 7


def test_map_args_checked():
    with pytest.raises(OSError):  # not an area address: refused before any mmap
        _image.map_image(0, (0x10000, PAGE, 0, PAGE, 0))
    with pytest.raises(OSError):
        _image.unmap_image((NF_REGION_BASE + 1, PAGE, 0, 0, 0))


def test_area_allocator():
    a = AreaAllocator(3)
    got = [a.allocate() for _ in range(3)]
    assert sorted(got) == [0, 1, 2] and len(a) == 3
    with pytest.raises(RuntimeError):
        a.allocate()
    a.free(1)
    assert a.allocate() == 1
    with pytest.raises(ValueError):
        a.free(5)
    assert a.area_base(2) == NF_REGION_BASE + 2 * NF_AREA_SIZE
    assert AreaAllocator().nareas == NF_AREAS
    with pytest.raises(ValueError):
        area_base(NF_AREAS)


# -- running an image in other processes -------------------------------------------------------

CHILD = r"""
import ctypes, json, os, sys
from serpens.runtime_cy import _image
fd = int(sys.argv[1])
layout = tuple(int(x) for x in sys.argv[2].split(","))
base, text_len, relro_len, data_len, entry_off = layout
_image.region_reserve()
_image.map_image(fd, layout, populate=bool(int(sys.argv[3])))
abi_major, abi_minor, name = _image.probe_entry(layout)
data = base + text_len + relro_len
before = ctypes.string_at(data, 8).hex()
ctypes.memmove(data, b"\xaa" * 8, 8)  # private: must not reach the memfd or other processes
after = ctypes.string_at(data, 8).hex()
in_file = os.pread(fd, 8, text_len + relro_len).hex()
_image.unmap_image(layout)
print(json.dumps(dict(abi=[abi_major, abi_minor], name=name, addr=base + entry_off,
                      pid=os.getpid(), before=before, after=after, in_file=in_file)))
"""


def run_child(img, populate=False):
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(img.fd), ",".join(map(str, img.layout)),
         str(int(populate))],
        pass_fds=(img.fd,), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("name", ["pass", "big_globals"])
def test_same_image_two_processes(name):
    """Two processes map one memfd at the same address; nf_entry runs and its relocated
    name pointer reads back; writes to .data stay private to the writer."""
    with build_nf(source(name), 9, name) as img:
        a = run_child(img)
        b = run_child(img, populate=True)
    assert a["pid"] != b["pid"]
    for r in (a, b):
        assert r["name"] == name
        assert r["abi"][0] == 1  # major; the minor follows nf.h
        assert r["addr"] == img.base + img.entry_off
        assert r["after"] == "aa" * 8
        assert r["in_file"] == r["before"] != r["after"]
    assert a["before"] == b["before"]  # b did not see a's write


def test_thousand_images_are_small(pass_so):
    """1000 deployed copies of pass.c: each memfd holds <= 32 KB of memory."""
    need = 1000 + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    imgs = []
    try:
        for i in range(1000):
            imgs.append(prepare_image(pass_so, 100 + i, f"pass{i}"))
        used = [os.fstat(img.fd).st_blocks * 512 for img in imgs]
    finally:
        for img in imgs:
            img.close()
    assert max(used) <= 32 * 1024
    assert sum(used) <= 1000 * 32 * 1024
    print(f"\nper NF image: {sum(used) / 1000 / 1024:.1f} KiB of memfd memory "
          f"(max {max(used) // 1024} KiB)")
