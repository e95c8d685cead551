"""runtime_cy/constants.py (the numbers the DPDK-free toolchain needs) equals the C headers it
copies: a C program built from those headers prints each value."""
import subprocess
from pathlib import Path

import pytest

from serpens.runtime_cy import constants

pytestmark = pytest.mark.unit

RUNTIME = Path(__file__).resolve().parents[1] / "runtime_cy"


def header_values(tmp_path, names):
    prints = "\n".join(f'    printf("%s %llu\\n", "{n}", (unsigned long long)SERPENS_{n});'
                       for n in names)
    src = tmp_path / "values.c"
    src.write_text('#include <stdio.h>\n#include "serpens/nf.h"\n#include "pool_ctl.h"\n'
                   f"int main(void)\n{{\n{prints}\n    return 0;\n}}\n")
    exe = tmp_path / "values"
    dpdk = subprocess.run(["pkg-config", "--cflags", "libdpdk"], check=True, capture_output=True,
                          text=True).stdout.split()  # pool_ctl.h uses rte_pause()
    cc = subprocess.run(["gcc", "-std=gnu11", "-I", str(RUNTIME / "include"),
                         "-I", str(RUNTIME / "src"), *dpdk, "-o", str(exe), str(src)],
                        capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_every_constant_equals_its_c_header(tmp_path):
    names = constants.__all__
    assert header_values(tmp_path, names) == {n: getattr(constants, n) for n in names}

