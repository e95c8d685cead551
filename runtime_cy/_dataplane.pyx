# cython: language_level=3
"""Every DPDK call of a Serpens process (DESIGN §3 "One DPDK build").

The agent (primary) uses it to own mempools and rings and, in tests and benchmarks, to push
packets into an instance and pull them back; a pool process (secondary) uses it to attach and
to run serpens_runtime_main(). Errors cross into Python once, as OSError.
"""
import array
import time

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport errno
from libc.stdint cimport int8_t, int16_t, int32_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset, strncpy, strerror
from posix.mman cimport (MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, MAP_SHARED, PROT_READ,
                         PROT_WRITE, mmap, munmap)

from includes.core cimport *
from includes.dpdk cimport *
from router_decl cimport *
from gateway_decl cimport *

LABEL_OUT = SERPENS_LABEL_OUT
LABEL_DROP = SERPENS_LABEL_DROP
BURST = SERPENS_BURST
MAX_STEPS = SERPENS_MAX_STEPS
MAX_PORTS = SERPENS_MAX_PORTS
MAX_IMAGES = SERPENS_MAX_IMAGES
CONFIG_MAX = SERPENS_CONFIG_MAX
STEP_NF = SERPENS_STEP_NF
STEP_HASH = SERPENS_STEP_HASH
LOAD_MAP = SERPENS_LOAD_MAP
STATE_LOCAL = SERPENS_STATE_LOCAL  # state_backend.h; the baselines' are in bench/native
CMD_START = SERPENS_CMD_START
CMD_STOP = SERPENS_CMD_STOP
CMD_EXIT = SERPENS_CMD_EXIT
POOL_BOOTING = SERPENS_POOL_BOOTING
POOL_IDLE = SERPENS_POOL_IDLE
POOL_RUNNING = SERPENS_POOL_RUNNING
POOL_EXITED = SERPENS_POOL_EXITED
CTL_SIZE = sizeof(serpens_pool_ctl)

cdef const char *LABEL_DYNFIELD_NAME = b"serpens_label"
LABEL_DYNFIELD = <bytes>LABEL_DYNFIELD_NAME
cdef int label_off = -1
cdef int meta_off = -1

# One module (one EAL per process), one file per concept; each file's C declarations are in
# includes/*.pxd (the router's in router/router_decl.pxd, the bench's in bench/native/).
include "dp/eal.pxi"
include "dp/rings.pxi"
include "dp/pool.pxi"
include "dp/pkt.pxi"
include "dp/state.pxi"
include "dp/ports.pxi"
include "dp/replay.pxi"
include "dp/sandbox.pxi"
include "_router.pxi"  # router/
include "_gateway.pxi"  # gateway/
include "_bench.pxi"   # bench/native/: the benchmarks' driver and baseline loaders
