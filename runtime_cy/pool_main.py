"""A pool process: `python -m serpens.runtime_cy.pool_main --ctl-fd N --sock-fd N --efd N -- EAL...`

Spawned by the agent's ProcessPool. It reserves the NF region before anything else can map
there, dies with the agent (PR_SET_PDEATHSIG), attaches to DPDK as a secondary, enters the
sandbox (runtime_cy/src/sandbox.h; --no-sandbox for benchmarks) and hands the rest of its life
to the C runtime (runtime_cy/src/runtime.c).
"""
import argparse
import ctypes
import signal
import sys

from serpens.runtime_cy import _dataplane as dp

PR_SET_PDEATHSIG = 1


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="serpens-pool")
    ap.add_argument("--ctl-fd", type=int, required=True)
    ap.add_argument("--sock-fd", type=int, required=True)
    ap.add_argument("--efd", type=int, required=True)
    ap.add_argument("--idle-us", type=int, default=200)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--no-sandbox", dest="sandbox", action="store_false",
                    help="run NFs without the sandbox (benchmarks comparing its cost)")
    ap.add_argument("--sandbox-network", action="store_true",
                    help="allow a Unix socket client in the sandbox (the Redis state baseline)")
    ap.add_argument("eal", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.eal and args.eal[0] == "--":
        args.eal = args.eal[1:]
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    dp.region_reserve()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    dp.eal_init(["serpens-pool"] + args.eal)
    dp.register_label_field()
    dp.set_state_dir(args.state_dir)
    if args.sandbox:  # last: everything above needs system calls the sandbox refuses
        dp.sandbox_enter(network=args.sandbox_network)
    dp.run_pool_process(args.ctl_fd, args.sock_fd, args.efd, args.idle_us)
    # No rte_eal_cleanup(): in DPDK 22.11 a secondary's cleanup leaves the shared malloc heap
    # unusable (the next secondary hangs in rte_eal_init, the primary in rte_free). Exiting
    # leaves nothing behind that the primary does not own.
    return 0


if __name__ == "__main__":
    sys.exit(main())
