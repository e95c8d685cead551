"""DESIGN §2's layers: the import-linter contracts in pyproject.toml hold, and the controller,
doing what it does (parse specs with stock NFs, build and verify an NF), never loads the DPDK
extension."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_import_contracts_hold():
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "lint-imports"),
                          "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout, out.stdout[-4000:]


def test_the_controller_at_work_never_loads_the_dpdk_extension():
    script = textwrap.dedent(f"""
        import sys
        import serpens.controller.main
        from serpens.controller import api
        from serpens.common.spec import parse_sfc
        from serpens.runtime_cy import sfc
        from serpens import nfs
        with open({os.path.join(ROOT, "examples", "dynamic-sfc.yaml")!r}) as f:
            spec = parse_sfc(f.read().split("---")[1], allow_source=False)
        assert {{nf.stock for nf in spec.nfs.values()}} >= {{"fw", "ids", "mon", "nat"}}
        assert api._build_nf("mon", open(nfs.source_path("mon")).read()) > 0
        print(sorted(m for m in sys.modules if m.startswith("serpens.runtime_cy")))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = out.stdout
    assert "serpens.runtime_cy.builder" in loaded and "serpens.runtime_cy.sfc" in loaded, loaded
    assert "serpens.runtime_cy._dataplane" not in loaded, loaded
