"""Build the runtime_cy extensions.

`_image` (NF builder/verifier/image preparation) needs no DPDK. `_dataplane` holds every DPDK
call of a process, linked statically against Debian's DPDK 22.11 so the agent (primary) and the
pool processes (secondaries) run the very same build (DESIGN §3, §6): a mixed shared/static pair
silently breaks mempools, and two extensions each linking DPDK would hold two EALs.
"""
import subprocess

from Cython.Build import cythonize
from setuptools import Extension, setup

# PMDs and drivers registered by constructors: they must be linked whole.
WHOLE_ARCHIVE = [
    "bus_vdev", "bus_pci", "mempool_ring",
    "net_null", "net_ring", "net_pcap", "net_af_packet", "net_memif", "net_tap",
    "net_virtio", "net_e1000", "net_ixgbe", "net_vmxnet3",
]
# In link order: a library comes before the ones it uses.
LIBS = ["gso", "security", "cryptodev", "hash", "ethdev", "net", "mbuf", "mempool", "rcu",
        "ring", "meter", "pci", "eal", "telemetry", "kvargs"]
SYSTEM_LIBS = ["-lpcap", "-lnuma", "-lbsd", "-latomic", "-lrt", "-lm", "-ldl", "-pthread"]


def dpdk_cflags():
    out = subprocess.run(["pkg-config", "--cflags", "libdpdk"], check=True, capture_output=True,
                         text=True).stdout.split()
    # -march=corei7 comes from Debian's build; keep it (rte_config expects SSE4.2).
    return [f for f in out if not f.startswith("-I/usr/include/libnl3")
            and "dbus" not in f]


def dpdk_static_link_args():
    args = ["-Wl,--whole-archive"]
    args += [f"-l:librte_{lib}.a" for lib in WHOLE_ARCHIVE]
    args += ["-Wl,--no-whole-archive"]
    args += [f"-l:librte_{lib}.a" for lib in LIBS]
    args += SYSTEM_LIBS
    # Keep the DPDK symbols private to this extension.
    args += ["-Wl,--exclude-libs,ALL"]
    return args


COMMON_CFLAGS = ["-O2", "-g", "-Wall", "-Wno-unused-function", "-std=gnu11"]
INCLUDES = ["runtime_cy/include", "runtime_cy/src", "router", "gateway", "bench/native"]

extensions = [
    Extension(
        "serpens.runtime_cy._image",
        sources=["runtime_cy/_image.pyx", "runtime_cy/src/nf_image.c"],
        include_dirs=INCLUDES,
        extra_compile_args=COMMON_CFLAGS,
    ),
    Extension(
        "serpens.runtime_cy._dataplane",
        sources=[
            "runtime_cy/_dataplane.pyx",
            "runtime_cy/src/nf_image.c",
            "runtime_cy/src/nf_api.c",
            "runtime_cy/src/pkt.c",
            "runtime_cy/src/chainer.c",
            "runtime_cy/src/observe.c",
            "runtime_cy/src/loader.c",
            "runtime_cy/src/runtime.c",
            "runtime_cy/src/state_table.c",
            "runtime_cy/src/state_backend.c",
            "runtime_cy/src/ports.c",
            "runtime_cy/src/replay.c",
            "runtime_cy/src/sandbox.c",
            "router/router.c",
            "gateway/gateway.c",
            # the benchmarks' native parts: the same EAL, so the same extension
            "bench/native/driver.c",
            "bench/native/loaders.c",
            "bench/native/redis_state.c",
            "bench/native/proxy.c",
            "bench/native/gwdrive.c",
        ],
        include_dirs=INCLUDES,
        # -mprfchw: a prefetch for writing is PREFETCHW (the line comes exclusive, not shared
        # with the core that wrote it: no second transfer at the first store); without it gcc
        # emits a plain prefetch. AMD has it, Intel since Broadwell (a NOP before).
        extra_compile_args=COMMON_CFLAGS + dpdk_cflags() + ["-mprfchw"],
        extra_link_args=dpdk_static_link_args(),
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        include_path=["runtime_cy", "router", "gateway", "bench/native"],
    )
)
