"""What tests share (DESIGN §2): importable as `support` because pytest puts tests/ on sys.path.

- packets: frames with explicit addresses (never resolved on the host's network)
- harness: packet-in/packet-out runs of an SFC in a real pool process (PacketHarness)
- sites: ring-backed DPDK ports and one-SFC router nodes (Wire, Site)
- etcd: a real etcd on loopback, the test CA, a partition proxy
- cluster: serpens-controller and serpens-agent as subprocesses (Controller, Agent)
- node_specs, nfs: a ring-port node config, mark SFC specs, the test NFs' sources
"""
