"""The global proxy's process: `python -m serpens.bench.proxy_main --ctl-fd N --rings RX:TX,... -- EAL`.

Spawned by bench/proxy.py: attaches to the rig's DPDK as a secondary and forwards each hop's
ring pair until the control block's cmd_seq moves (bench/native/proxy.h).
"""
import argparse
import ctypes
import os
import signal
import sys

from serpens.runtime_cy import _dataplane as dp

PR_SET_PDEATHSIG = 1


def main(argv=None):
    ap = argparse.ArgumentParser(prog="serpens-bench-proxy")
    ap.add_argument("--ctl-fd", type=int, required=True)
    ap.add_argument("--report-fd", type=int, default=-1,
                    help="where to write the packets forwarded per hop (comma-separated) at the end")
    ap.add_argument("--rings", required=True, help="RX:TX ring names per hop, comma-separated")
    ap.add_argument("eal", nargs=argparse.REMAINDER)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    eal = args.eal[1:] if args.eal[:1] == ["--"] else args.eal
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the bench
    dp.eal_init(["serpens-bench-proxy"] + eal)
    label_off = dp.register_label_field()
    hops = [pair.split(":") for pair in args.rings.split(",")]
    forwarded = dp.bench_proxy(dp.PoolCtl(args.ctl_fd), [rx for rx, _ in hops],
                               [tx for _, tx in hops], label_off)
    if args.report_fd >= 0:  # what each hop passed: the bench checks the proxy did its work
        with os.fdopen(args.report_fd, "w") as report:
            report.write(",".join(map(str, forwarded)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
