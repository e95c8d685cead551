"""Stands in for the DPDK extension of the same name, built from _dataplane.pyx.

Python prefers an extension module to a .py file of the same name in one directory, so this
file runs only when the extension was not built. It also lets import-linter, which reads .py
files only, see who imports the extension (the contracts in pyproject.toml).
"""
raise ImportError("serpens.runtime_cy._dataplane, the DPDK extension, is not built: "
                  "run scripts/setup.sh")
