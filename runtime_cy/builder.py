"""NF builder: compile an NF's C source, verify it against the NF ABI, prepare its image.

The NF manager calls build_nf() (or compile_nf() + prepare_image()) and hands the resulting
sealed memfd to pool processes, which map it at the slot address with _image.map_image()
(DESIGN §3 "NF images"). Everything the ABI forbids is refused by the verifier in
src/nf_image.c, which names the offending symbol, relocation or feature.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from serpens.runtime_cy import _image
from serpens.runtime_cy.errors import NFBuildError, NFRefusedError

__all__ = [
    "NF_CFLAGS", "NF_LDFLAGS", "NF_REGION_BASE", "NF_SLOT_SIZE", "NF_SLOTS",
    "NFBuildError", "NFRefusedError", "NFImage", "SlotAllocator",
    "compile_nf", "verify_nf", "prepare_image", "build_nf", "slot_base",
]

_PKG = Path(__file__).resolve().parent
NF_INCLUDE = _PKG / "include"
NF_MEM_SOURCE = _PKG / "nf_support" / "mem.c"

NF_REGION_BASE: int = _image.NF_REGION_BASE
NF_SLOT_SIZE: int = _image.NF_SLOT_SIZE
NF_SLOTS: int = _image.NF_SLOTS

# DESIGN §6. -maes/-msse4.2/-mpclmul let NFs use AES-NI/CRC32/CLMUL intrinsics (freestanding
# headers); every x86-64 server we target has them.
NF_CFLAGS: tuple[str, ...] = (
    "-O2", "-fPIC", "-ffreestanding", "-nostdlib", "-fvisibility=hidden",
    "-fno-stack-protector", "-fno-plt", "-fcf-protection=none", "-fno-exceptions",
    "-fno-asynchronous-unwind-tables", "-march=x86-64-v2", "-maes", "-msse4.2", "-mpclmul",
    f"-I{NF_INCLUDE}",
)
# No --no-undefined: the verifier names an undefined symbol with a clearer message.
NF_LDFLAGS: tuple[str, ...] = (
    "-shared", "-nostdlib", "-Wl,-Bsymbolic", "-Wl,-z,noseparate-code",
    "-Wl,-z,max-page-size=4096", "-Wl,-z,now", "-Wl,-z,relro", "-Wl,--hash-style=gnu",
    "-Wl,--build-id=none",
)
# mem.c only: keep gcc from turning its loops back into calls to memcpy/memset.
_MEM_CFLAGS = ("-fno-builtin", "-fno-tree-loop-distribute-patterns")

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_BUILD_TIMEOUT = 120


def _cc() -> str:
    return os.environ.get("CC") or "gcc"


def _run(argv: list[str], cwd: str, what: str) -> None:
    try:
        # LC_ALL=C: plain ASCII quotes in diagnostics, whatever the agent's locale.
        res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, errors="replace",
                             timeout=_BUILD_TIMEOUT, env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError as e:
        raise NFBuildError(f"{what}: compiler not found ({argv[0]})", str(e)) from None
    except subprocess.TimeoutExpired:
        raise NFBuildError(f"{what}: timed out after {_BUILD_TIMEOUT} s", "") from None
    if res.returncode != 0:
        output = (res.stderr + res.stdout).strip()
        raise NFBuildError(f"{what} failed:\n{output}", output)


# Compiled objects by (source digest, compiler): an SFC applied again, or an NF used by
# several SFCs, starts without running gcc (three NFs take ~1 s to compile here).
_compiled: OrderedDict[tuple, bytes] = OrderedDict()
_compiled_lock = threading.Lock()
_COMPILED_MAX = 64


def compile_nf(source: str | bytes, *, name: str = "nf") -> bytes:
    """Compile and link one NF source file; return the shared object's bytes.

    The file is compiled as `<name>.c` in a temporary directory (so diagnostics read
    "<name>.c:12:5: error: ..."). Raises NFBuildError with the compiler/linker output.
    Results are remembered (a few dozen), so the same source is compiled once per process.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"bad NF name {name!r} (letters, digits, '_', '.', '-'; max 64)")
    if isinstance(source, str):
        source = source.encode()
    key = (hashlib.sha256(source).digest(), _cc())  # the name only shows in diagnostics
    with _compiled_lock:
        if key in _compiled:
            _compiled.move_to_end(key)
            return _compiled[key]
    so = _compile(source, name)
    with _compiled_lock:
        _compiled[key] = so
        while len(_compiled) > _COMPILED_MAX:
            _compiled.popitem(last=False)
    return so


def _compile(source: bytes, name: str) -> bytes:
    cc = _cc()
    diag = ["-fdiagnostics-color=never"]
    with tempfile.TemporaryDirectory(prefix="serpens-nf-") as tmp:
        Path(tmp, f"{name}.c").write_bytes(source)
        _run([cc, *NF_CFLAGS, *diag, "-c", f"{name}.c", "-o", "nf.o"], tmp,
             f"compiling {name}.c")
        _run([cc, *NF_CFLAGS, *_MEM_CFLAGS, *diag, "-c", str(NF_MEM_SOURCE), "-o", "mem.o"],
             tmp, "compiling nf_support/mem.c")
        _run([cc, *NF_LDFLAGS, *diag, "nf.o", "mem.o", "-o", f"{name}.so"], tmp,
             f"linking {name}.so")
        return Path(tmp, f"{name}.so").read_bytes()


def verify_nf(so: bytes) -> None:
    """Raise NFRefusedError naming what in `so` breaks the NF ABI; None if it is fine."""
    _image.verify(so)


def slot_base(slot: int) -> int:
    """Address of a slot in the NF region."""
    if not 0 <= slot < NF_SLOTS:
        raise ValueError(f"slot {slot} is not in [0, {NF_SLOTS})")
    return NF_REGION_BASE + slot * NF_SLOT_SIZE


@dataclass
class NFImage:
    """A prepared NF image: a sealed memfd, relocated for `base`, and where its pieces go.

    Owns `fd` (close() or use as a context manager). Pass `fd` to pool processes (SCM_RIGHTS
    or pass_fds) with `layout`; they call _image.map_image(fd, layout).
    """
    name: str
    slot: int
    fd: int
    base: int
    text_len: int
    relro_len: int
    data_len: int
    entry_off: int

    @property
    def layout(self) -> tuple[int, int, int, int, int]:
        return (self.base, self.text_len, self.relro_len, self.data_len, self.entry_off)

    @property
    def size(self) -> int:
        """Bytes of the memfd (the mapped extent; .bss pages in it are holes)."""
        return self.text_len + self.relro_len + self.data_len

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> NFImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prepare_image(so: bytes, slot: int, name: str) -> NFImage:
    """Verify `so` and build its sealed memfd, relocated for `slot`."""
    base = slot_base(slot)
    fd, (base, text_len, relro_len, data_len, entry_off) = _image.prepare(so, base)
    return NFImage(name, slot, fd, base, text_len, relro_len, data_len, entry_off)


def build_nf(source: str | bytes, slot: int, name: str) -> NFImage:
    """compile_nf() + prepare_image()."""
    return prepare_image(compile_nf(source, name=name), slot, name)


class SlotAllocator:
    """Hands out NF region slots. Thread-safe.

    Never-used slots go first; freed ones are reused only once all were handed out, so a slot
    whose old image some process may still have mapped is not reused soon.
    """

    def __init__(self, nslots: int = NF_SLOTS):
        if not 0 < nslots <= NF_SLOTS:
            raise ValueError(f"nslots must be in [1, {NF_SLOTS}]")
        self.nslots = nslots
        self._used: set[int] = set()
        self._next = 0  # every slot >= _next is free
        self._lock = threading.Lock()

    def allocate(self) -> int:
        with self._lock:
            if len(self._used) >= self.nslots:
                raise RuntimeError(f"no free NF slot (all {self.nslots} in use)")
            if self._next < self.nslots:
                slot = self._next
                self._next += 1
            else:
                # Only after wrapping: linear scan for a hole; rare (65536 NFs deployed).
                slot = next(s for s in range(self.nslots) if s not in self._used)
            self._used.add(slot)
            return slot

    def free(self, slot: int) -> None:
        with self._lock:
            if slot not in self._used:
                raise ValueError(f"slot {slot} is not allocated")
            self._used.remove(slot)

    def reserve(self, slot: int) -> None:
        """Mark a specific slot used (e.g. restoring NFs after an agent restart)."""
        with self._lock:
            if not 0 <= slot < self.nslots:
                raise ValueError(f"slot {slot} is not in [0, {self.nslots})")
            if slot in self._used:
                raise ValueError(f"slot {slot} is already allocated")
            self._used.add(slot)

    def __len__(self) -> int:
        return len(self._used)

    slot_base = staticmethod(slot_base)
