"""The C headers' numbers that the NF toolchain needs, importable without DPDK.

The controller compiles SFCs and checks NF configurations (DESIGN §2) but must not load the
DPDK extension `_dataplane`, which exposes the same numbers. Each value here is copied from
the header named beside it; tests/test_constants.py compiles those headers and fails on any
difference, so the C side stays the one place they are decided.
"""

__all__ = ["BURST", "MAX_PORTS", "LABEL_OUT", "LABEL_DROP", "MAX_STEPS", "MAX_IMAGES",
           "CONFIG_MAX", "STEP_NF", "STEP_HASH"]

# include/serpens/nf.h (the NF ABI)
BURST = 32              # SERPENS_BURST: packets per batch, at most
MAX_PORTS = 8           # SERPENS_MAX_PORTS: output ports of one NF
LABEL_OUT = 0xFFFE      # SERPENS_LABEL_OUT: leave the SFC
LABEL_DROP = 0xFFFF     # SERPENS_LABEL_DROP: the router frees it

# src/pool_ctl.h (what one start command carries)
MAX_STEPS = 16          # SERPENS_MAX_STEPS: NFs and selectors in one SFC
MAX_IMAGES = 16         # SERPENS_MAX_IMAGES
CONFIG_MAX = 1 << 20    # SERPENS_CONFIG_MAX: bytes of NF configuration in one SFC
STEP_NF = 1             # SERPENS_STEP_NF: call an NF
STEP_HASH = 2           # SERPENS_STEP_HASH: distribute by flow hash
