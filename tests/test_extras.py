"""The accelerator extras of setup.py resolve, with pip, to the same JAX version as the CPU
pin plus that accelerator's plugin (a dry run: nothing is installed). Slow: pip resolves
the CUDA wheels' metadata from the package registry."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = {"cuda12": "jax-cuda12-plugin", "cuda13": "jax-cuda13-plugin", "tpu": "libtpu"}


def setup_lists():
    """INSTALL_REQUIRES and EXTRAS as setup.py writes them (read, not executed)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("INSTALL_REQUIRES", "EXTRAS"):
            found[node.targets[0].id] = ast.literal_eval(node.value)
    return found["INSTALL_REQUIRES"], found["EXTRAS"]


def test_accelerator_extras_pin_the_cpu_jax_version():
    install, extras = setup_lists()
    cpu = next(r for r in install if r.startswith("jax["))
    version = cpu.split("==")[1]
    for extra in PLUGINS:
        assert extras[extra] == [f"jax[{extra}]=={version}"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(PLUGINS))
def test_extra_resolves(extra, tmp_path):
    install, extras = setup_lists()
    version = next(r for r in install if r.startswith("jax[")).split("==")[1]
    report = tmp_path / "report.json"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
                          "--ignore-installed", "--report", str(report), *extras[extra]],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0 and re.search(r"(?i)connection|network|resolve host", out.stderr):
        pytest.skip(f"package registry not reachable: {out.stderr[-300:]}")
    assert out.returncode == 0, out.stderr[-2000:]
    got = {i["metadata"]["name"].lower(): i["metadata"]["version"]
           for i in json.loads(report.read_text())["install"]}
    assert got["jax"] == version and got["jaxlib"] == version
    assert PLUGINS[extra] in got
