"""``benchmarks/memory_plan.py`` reads a step's memory from XLA's buffer-assignment dump
(and stops the compile there): its sums equal ``Compiled.memory_analysis()``."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# a donated argument (aliased output), a live-out result and temporaries
PROGRAM = """
import json, jax, jax.numpy as jnp
def step(w, x):
    h = jnp.tanh(x @ w)
    g = jnp.cos(h).T @ x
    return w - 0.1 * g.T, (h * h).sum(axis=0)
w = jax.ShapeDtypeStruct((256, 384), jnp.float32)
x = jax.ShapeDtypeStruct((512, 256), jnp.float32)
ma = jax.jit(step, donate_argnums=0).lower(w, x).compile().memory_analysis()
print(json.dumps({"argument": ma.argument_size_in_bytes, "output": ma.output_size_in_bytes,
                  "alias": ma.alias_size_in_bytes, "temp": ma.temp_size_in_bytes}))
"""


def _memory_plan():
    spec = importlib.util.spec_from_file_location("memory_plan", ROOT / "benchmarks" / "memory_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_buffer_assignment_dump_equals_memory_analysis(tmp_path):
    dump = tmp_path / "dump"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_dump_to={dump} --xla_dump_hlo_as_text "
                         "--xla_dump_hlo_module_re=^jit_step$")
    res = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    want = json.loads(res.stdout.strip().splitlines()[-1])
    (path,) = dump.glob("*jit_step*-buffer-assignment.txt")
    got = _memory_plan().buffer_assignment_sizes(str(path))
    assert got == want
    assert want["alias"] == 256 * 384 * 4 and want["temp"] > 0 and want["output"] > want["alias"]


def test_buffer_assignment_sizes_names_a_file_without_allocations(tmp_path):
    bad = tmp_path / "not-a-dump.txt"
    bad.write_text("HloModule jit_step\n")
    with pytest.raises(ValueError, match="not-a-dump.txt: no 'allocation"):
        _memory_plan().buffer_assignment_sizes(str(bad))
