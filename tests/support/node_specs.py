"""A node config and SFC specs for node tests: three ring-backed ports (no device of the host)
and SFCs of one `mark` NF (tests/nfs/mark.c)."""
import os

from serpens.common.spec import parse_sfc

MARK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nfs",
                    "mark.c")

NODE = """
apiVersion: serpens/v1
kind: Node
metadata: {name: edge-1}
spec:
  ports:
    wan: net_ring_wan
    lan: net_ring_lan
    dmz: net_ring_dmz
  input: [wan]
  output: lan
  pool: 2
"""


def sfc(name, mark_id, extra=""):
    return parse_sfc(f"""
apiVersion: serpens/v1
kind: SFC
metadata: {{name: {name}}}
spec:
  nfs:
    mark: {{source: {MARK}, config_hex: "{mark_id:02x}00"}}
  chain: [mark]
{extra}""")
