"""NF builder: compile an NF's C source, verify it against the NF ABI, prepare its image.

The NF manager calls build_nf() (or compile_nf() + prepare_image()) and hands the resulting
sealed memfd to pool processes, which map it at the area address with _image.map_image()
(DESIGN §3 "NF images"). Everything the ABI forbids is refused by the verifier in
src/nf_image.c, which names the offending symbol, relocation or feature.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from serpens.runtime_cy import _image, compiler_jail
from serpens.runtime_cy.errors import NFBuildError, NFRefusedError

__all__ = [
    "NF_CFLAGS", "NF_LDFLAGS", "NF_REGION_BASE", "NF_AREA_SIZE", "NF_AREAS",
    "NFBuildError", "NFRefusedError", "NFImage", "AreaAllocator",
    "check_source", "compile_nf", "verify_nf", "prepare_image", "build_nf", "area_base",
]

_PKG = Path(__file__).resolve().parent
NF_INCLUDE = _PKG / "include"
NF_MEM_SOURCE = _PKG / "nf_support" / "mem.c"

NF_REGION_BASE: int = _image.NF_REGION_BASE
NF_AREA_SIZE: int = _image.NF_AREA_SIZE
NF_AREAS: int = _image.NF_AREAS

# The compiler's own freestanding headers (stddef.h, stdint.h, the x86 intrinsics): the only
# ones besides the NF ABI's; -nostdinc keeps /usr/include and the like out of the search.
FREESTANDING_INCLUDE = subprocess.run(
    [os.environ.get("CC") or "gcc", "-print-file-name=include"], capture_output=True,
    text=True).stdout.strip()

# DESIGN §6. -maes/-msse4.2/-mpclmul let NFs use AES-NI/CRC32/CLMUL intrinsics (freestanding
# headers); every x86-64 server we target has them. -O3, not -O2: NFs are loops over a batch,
# and their unrolled, vectorized forms took 3-9% fewer cycles per packet in each stock NF
# (nf_cycles as bench sfc counts them, on its rig, 2026-12-01: MON in FW->MON->NAT 42 -> 38;
# IDS and VPN alone 68 -> 64 and 178 -> 170).
NF_CFLAGS: tuple[str, ...] = (
    "-O3", "-fPIC", "-ffreestanding", "-nostdlib", "-fvisibility=hidden",
    "-fno-stack-protector", "-fno-plt", "-fcf-protection=none", "-fno-exceptions",
    "-fno-asynchronous-unwind-tables", "-march=x86-64-v2", "-maes", "-msse4.2", "-mpclmul",
    "-nostdinc", f"-isystem{FREESTANDING_INCLUDE}", f"-I{NF_INCLUDE}",
    # xmmintrin.h pulls mm_malloc.h, which needs libc's stdlib.h; _mm_malloc is no use
    # without libc anyway: skip it (its include guard).
    "-D_MM_MALLOC_H_INCLUDED",
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
_LIMITS = compiler_jail.Limits()

# ---- what an NF's source may ask the compiler to read --------------------------------------

# Headers an NF may include: the ABI's, and the compiler's freestanding ones (nothing of the
# host's: no libc, no /usr/include).
_ALLOWED_INCLUDE = re.compile(
    r"""^(?:<|")(?:serpens/[A-Za-z0-9_]+\.h|std(?:def|int|bool|arg|align|noreturn)\.h|float\.h"""
    r"""|[a-z0-9]*intrin\.h)(?:>|")$""")
_DIRECTIVE = re.compile(r"^\s*(?:#|%:)\s*([A-Za-z_]+)\s*(.*)$")  # %: is the digraph of #
_READ_DIRECTIVES = {"include", "include_next", "import", "embed"}
# Assembler directives that read files, wherever they appear (inline asm, top-level asm).
_ASM_READS = re.compile(r"\.\s*(incbin|include)\b", re.IGNORECASE)
_PRAGMA_DEPENDENCY = re.compile(r"\bdependency\b")
# asks whether a host file exists (the jail refuses to read it, but its error would tell)
_HAS_INCLUDE = re.compile(r"\b__has_include(_next)?\b")
_ALLOWED_LIST = "serpens/*.h, stddef.h, stdint.h, stdbool.h, stdarg.h, stdalign.h, stdnoreturn.h, float.h, *intrin.h"


def _logical_lines(text: str):
    """(first physical line number, logical line) with backslash-newlines joined and
    comments blanked, as the preprocessor sees directives."""
    text = re.sub(r"/\*.*?\*/", lambda m: " " + "\n" * m.group().count("\n"),
                  text, flags=re.S)
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        start, line = i + 1, lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + lines[i]
        yield start, re.sub(r"//.*$", "", line)
        i += 1


def check_source(source: bytes, name: str = "nf") -> None:
    """Refuse source that asks the compiler to read a file other than the NF ABI's headers:
    NFBuildError naming the line. (The compiler runs confined anyway: compiler_jail.)"""
    text = source.decode("utf-8", errors="replace")
    for lineno, line in _logical_lines(text):
        where = f"{name}.c:{lineno}"
        m = _DIRECTIVE.match(line)
        if m:
            directive, rest = m.group(1), m.group(2).strip()
            if directive in _READ_DIRECTIVES and not (
                    directive == "include" and _ALLOWED_INCLUDE.match(rest)):
                raise NFBuildError(
                    f"{where}: #{directive} {rest[:80]} is not allowed: an NF may include only "
                    f"{_ALLOWED_LIST}", "")
            if directive == "pragma" and _PRAGMA_DEPENDENCY.search(rest):
                raise NFBuildError(f"{where}: #pragma ... dependency reads another file and "
                                   "is not allowed in an NF", "")
        if "_Pragma" in line and _PRAGMA_DEPENDENCY.search(line):
            raise NFBuildError(f"{where}: _Pragma(... dependency ...) reads another file and "
                               "is not allowed in an NF", "")
        if _HAS_INCLUDE.search(line):
            raise NFBuildError(f"{where}: __has_include asks about host files and is not "
                               "allowed in an NF", "")
        am = _ASM_READS.search(line)
        if am:
            raise NFBuildError(f"{where}: the assembler directive .{am.group(1).lower()} reads "
                               "a file and is not allowed in an NF", "")


def _cc() -> str:
    return os.environ.get("CC") or "gcc"


def _run(argv: list[str], cwd: str, what: str, ruleset: int, name: str) -> None:
    """Run one compiler step confined (compiler_jail); NFBuildError with its output, less
    anything that could quote a file other than the NF's own source."""
    try:
        # LC_ALL=C: plain ASCII quotes in diagnostics, whatever the agent's locale; TMPDIR:
        # the compiler's temporaries in the build directory, the only place it may write.
        res = subprocess.run(compiler_jail.confined(argv, ruleset, _LIMITS), cwd=cwd,
                             capture_output=True, text=True, errors="replace",
                             timeout=_LIMITS.wall_seconds, pass_fds=(ruleset,),
                             env={**os.environ, "LC_ALL": "C", "TMPDIR": cwd})
    except FileNotFoundError as e:
        raise NFBuildError(f"{what}: compiler not found ({argv[0]})", str(e)) from None
    except subprocess.TimeoutExpired:
        raise NFBuildError(f"{what}: timed out after {_LIMITS.wall_seconds:g} s", "") from None
    if res.returncode == compiler_jail.NOT_RUN and "compiler jail:" in res.stderr:
        raise NFBuildError(f"{what}: compiler not found ({argv[0]})", res.stderr.strip())
    if res.returncode != 0:
        output = _own_diagnostics(res.stderr + res.stdout, name, cwd)
        if res.returncode < 0:
            output += f"\n(the compiler was killed by signal {-res.returncode}: a resource " \
                      "limit of the build was exceeded)"
        raise NFBuildError(f"{what} failed:\n{output.strip()}", output.strip())


# Lines worth passing on: messages about the NF's own files, and the toolchain's own
# one-line verdicts (which name files but quote none).
_TOOL_LINE = re.compile(r"^(?:\S*/)?(?:gcc|cc|cc1|as|ld|collect2|x86_64-linux-gnu-[a-z+]+)"
                        r"(?:\.[a-z]+)?: ")


_QUOTED_SOURCE = re.compile(r"^ *\d* \|")


def _own_diagnostics(output: str, name: str, build_dir: str) -> str:
    """Compiler output with only the lines about `name`'s own files (its source, and the
    assembly and objects made from it in `build_dir`): a message about another file (it may
    quote that file's text) is withheld, and counted."""
    own = (f"{name}.c:", f"{name}.s:", f"{name}.o:", f"{name}.so:", "nf.o:", "mem.o:")
    # the assembler names gcc's temporary .s file: call it what it is
    output = re.sub(re.escape(build_dir) + r"/[A-Za-z0-9_.]+\.s\b", f"{name}.s", output)
    kept, withheld, quoting = [], 0, False
    for line in output.splitlines():
        if _QUOTED_SOURCE.match(line):  # a source line under the message before it
            if quoting:
                kept.append(line)
            else:
                withheld += 1
            continue
        quoting = line.startswith(own)
        if quoting or (_TOOL_LINE.match(line) and "Assembler messages" not in line):
            kept.append(line)
        elif line.strip():
            withheld += 1
    if withheld:
        kept.append(f"({withheld} line(s) about other files withheld)")
    return "\n".join(kept)


# Compiled objects by (source digest, compiler): an SFC applied again, or an NF used by
# several SFCs, starts without running gcc (three NFs take ~1 s to compile here).
_compiled: OrderedDict[tuple, bytes] = OrderedDict()
_compiled_lock = threading.Lock()
_COMPILED_MAX = 64

# Opt-in, for processes of one user that build the same NFs (a test session's agents and
# benchmarks): a directory (ours, mode 0700) of compiled objects shared between processes,
# filed by the digest of the source and of the toolchain (compiler, flags, NF headers, mem.c).
# An object read from it is verified like any build (prepare_image). Failures are not kept.
NF_CACHE_ENV = "SERPENS_NF_CACHE_DIR"


@functools.cache
def _toolchain_digest(cc: str) -> bytes:
    h = hashlib.sha256(repr((cc, NF_CFLAGS, NF_LDFLAGS, _MEM_CFLAGS)).encode())
    compiler = shutil.which(cc)
    if compiler:
        st = os.stat(compiler)
        h.update(f"{os.path.realpath(compiler)} {st.st_size} {st.st_mtime_ns}".encode())
    for path in sorted([*NF_INCLUDE.rglob("*.h"), NF_MEM_SOURCE]):
        h.update(str(path.relative_to(_PKG)).encode() + b"\0" + path.read_bytes())
    return h.digest()


def _shared_cache_path(source_digest: bytes, cc: str) -> Path | None:
    directory = os.environ.get(NF_CACHE_ENV)
    if not directory:
        return None
    try:
        st = os.stat(directory)
    except OSError as e:
        raise NFBuildError(f"{NF_CACHE_ENV}={directory}: {e.strerror}", "") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise NFBuildError(f"{NF_CACHE_ENV}={directory} must be a directory of this user's "
                           "that only it can use (mode 0700)", "")
    key = hashlib.sha256(source_digest + _toolchain_digest(cc)).hexdigest()
    return Path(directory, f"{key}.so")


def _keep_shared(path: Path, so: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(so)
        os.replace(tmp, path)  # whole or not at all, whoever reads it meanwhile
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def compile_nf(source: str | bytes, *, name: str = "nf") -> bytes:
    """Compile and link one NF source file; return the shared object's bytes.

    The file is compiled as `<name>.c` in a temporary directory (so diagnostics read
    "<name>.c:12:5: error: ..."). Raises NFBuildError with the compiler/linker output.
    Results are remembered (a few dozen), so the same source is compiled once per process,
    and with SERPENS_NF_CACHE_DIR set once per cache directory (NF_CACHE_ENV).
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
    shared = _shared_cache_path(*key)
    if shared is not None and shared.is_file():
        so = shared.read_bytes()
    else:
        so = _compile(source, name)
        if shared is not None:
            _keep_shared(shared, so)
    with _compiled_lock:
        _compiled[key] = so
        while len(_compiled) > _COMPILED_MAX:
            _compiled.popitem(last=False)
    return so


def _compile(source: bytes, name: str) -> bytes:
    check_source(source, name)
    cc = _cc()
    diag = ["-fdiagnostics-color=never"]
    with tempfile.TemporaryDirectory(prefix="serpens-nf-") as tmp:
        Path(tmp, f"{name}.c").write_bytes(source)
        ruleset = compiler_jail.build_ruleset(
            [*compiler_jail.READ_ONLY_PATHS, str(NF_INCLUDE), str(NF_MEM_SOURCE.parent)],
            [*compiler_jail.READ_WRITE_PATHS, tmp])
        try:
            _run([cc, *NF_CFLAGS, *diag, "-c", f"{name}.c", "-o", "nf.o"], tmp,
                 f"compiling {name}.c", ruleset, name)
            _run([cc, *NF_CFLAGS, *_MEM_CFLAGS, *diag, "-c", str(NF_MEM_SOURCE), "-o",
                  "mem.o"], tmp, "compiling nf_support/mem.c", ruleset, name)
            _run([cc, *NF_LDFLAGS, *diag, "nf.o", "mem.o", "-o", f"{name}.so"], tmp,
                 f"linking {name}.so", ruleset, name)
        finally:
            os.close(ruleset)
        return Path(tmp, f"{name}.so").read_bytes()


def verify_nf(so: bytes) -> None:
    """Raise NFRefusedError naming what in `so` breaks the NF ABI; None if it is fine."""
    _image.verify(so)


def area_base(area: int) -> int:
    """Address of an area in the NF region."""
    if not 0 <= area < NF_AREAS:
        raise ValueError(f"area {area} is not in [0, {NF_AREAS})")
    return NF_REGION_BASE + area * NF_AREA_SIZE


@dataclass
class NFImage:
    """A prepared NF image: a sealed memfd, relocated for `base`, and where its pieces go.

    Owns `fd` (close() or use as a context manager). Pass `fd` to pool processes (SCM_RIGHTS
    or pass_fds) with `layout`; they call _image.map_image(fd, layout).
    """
    name: str
    area: int
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


def prepare_image(so: bytes, area: int, name: str) -> NFImage:
    """Verify `so` and build its sealed memfd, relocated for `area`."""
    base = area_base(area)
    fd, (base, text_len, relro_len, data_len, entry_off) = _image.prepare(so, base)
    return NFImage(name, area, fd, base, text_len, relro_len, data_len, entry_off)


def build_nf(source: str | bytes, area: int, name: str) -> NFImage:
    """compile_nf() + prepare_image()."""
    return prepare_image(compile_nf(source, name=name), area, name)


class AreaAllocator:
    """Hands out NF region areas. Thread-safe.

    Never-used areas go first; freed ones are reused only once all were handed out, so an area
    whose old image some process may still have mapped is not reused soon.
    """

    def __init__(self, nareas: int = NF_AREAS):
        if not 0 < nareas <= NF_AREAS:
            raise ValueError(f"nareas must be in [1, {NF_AREAS}]")
        self.nareas = nareas
        self._used: set[int] = set()
        self._next = 0  # every area >= _next is free
        self._lock = threading.Lock()

    def allocate(self) -> int:
        with self._lock:
            if len(self._used) >= self.nareas:
                raise RuntimeError(f"no free NF area (all {self.nareas} in use)")
            if self._next < self.nareas:
                area = self._next
                self._next += 1
            else:
                # Only after wrapping: linear scan for a hole; rare (65536 NFs deployed).
                area = next(s for s in range(self.nareas) if s not in self._used)
            self._used.add(area)
            return area

    def free(self, area: int) -> None:
        with self._lock:
            if area not in self._used:
                raise ValueError(f"area {area} is not allocated")
            self._used.remove(area)

    def reserve(self, area: int) -> None:
        """Mark a specific area used (e.g. restoring NFs after an agent restart)."""
        with self._lock:
            if not 0 <= area < self.nareas:
                raise ValueError(f"area {area} is not in [0, {self.nareas})")
            if area in self._used:
                raise ValueError(f"area {area} is already allocated")
            self._used.add(area)

    def __len__(self) -> int:
        return len(self._used)

    area_base = staticmethod(area_base)
