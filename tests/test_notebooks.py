"""The Colab notebooks in ``colab/`` run headless, top to bottom, and reach their outcomes.

Each notebook is stored without outputs, then executed with nbclient on a kernel of this
test's own Python (a kernel spec written to a temporary directory that launches
``sys.executable -m ipykernel_launcher``, so no ``ipykernel install`` step and no other
``python3`` kernel is used), with a fresh temporary directory as its working directory
(every file a notebook writes goes there). The checks read the ``RESULT {json}`` line that
each notebook prints last and the files it wrote.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

COLAB = Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = ("taco_in_your_training.ipynb", "index_and_search.ipynb", "quickstart.ipynb")
CELL_TIMEOUT = 300  # seconds per cell; each notebook runs in well under 3 minutes unloaded
KERNEL_NAME = "multiret-test-python"
CHECK_KERNEL = "import sys\nprint('KERNEL_PREFIX', sys.prefix)"


def _kernel_manager(tmp: Path):
    """An async kernel manager whose kernel is ``sys.executable`` (this venv's Python)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec_dir = tmp / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "multiret_jax tests", "language": "python"}))
    return AsyncKernelManager(kernel_name=KERNEL_NAME, connection_file=str(tmp / "kernel.json"),
                              kernel_spec_manager=KernelSpecManager(
                                  kernel_dirs=[str(tmp / "kernels")]))


def _stream_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream")


def execute(name: str, tmp_path: Path):
    """Runs ``colab/<name>`` in ``<tmp_path>/work``; returns (executed notebook, the dict
    of its last ``RESULT {json}`` line, the working directory)."""
    nb = nbformat.read(COLAB / name, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(CHECK_KERNEL))
    work = tmp_path / "work"
    work.mkdir()
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, km=_kernel_manager(tmp_path),
                                     resources={"metadata": {"path": str(work)}})
    client.execute()
    assert f"KERNEL_PREFIX {sys.prefix}\n" in _stream_text(nb.cells[0]), \
        "the notebook ran on another Python than the test's"
    lines = [line for c in nb.cells if c.cell_type == "code"
             for line in _stream_text(c).splitlines() if line.startswith("RESULT ")]
    assert lines, f"{name}: no RESULT line printed"
    return nb, json.loads(lines[-1][len("RESULT "):]), work


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs(name):
    nb = nbformat.read(COLAB / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for i, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, \
            f"{name}: code cell {i} has stored outputs (strip them before committing)"
    first = code[0].source
    assert 'if "google.colab" in sys.modules:' in first and "[demo]" in first, \
        f"{name}: the first code cell must be the Colab-only install"


def test_taco_in_your_training(tmp_path):
    _, res, _ = execute("taco_in_your_training.ipynb", tmp_path)
    k = res["num_tasks"]
    assert res["weights_max_sum_error"] < 1e-5  # softmax over tasks: sums to 1 everywhere
    assert 0.0 < res["mean_entropy"] < res["log_k"] == pytest.approx(math.log(k))
    assert res["embedding_rows_dominant_task"] == list(range(k))  # row k: task k's alone
    for method in ("taco", "naive"):
        final = res[f"{method}_final_loss"]
        assert all(math.isfinite(x) for x in final)
        assert max(final) < 0.2 * min(res["initial_loss"]), (method, final, res["initial_loss"])


@pytest.mark.slow  # ~1 min; the retrieve CLI's tests index and search by default
def test_index_and_search(tmp_path):
    _, res, work = execute("index_and_search.ipynb", tmp_path)
    assert 1000 <= res["num_passages"] <= 1500
    assert res["flat_vs_exact_recall_at_10"] == 1.0
    assert min(res["hnsw_recall_at_10"].values()) >= 0.9
    assert res["hnsw_recall_at_10"]["128"] >= 0.99
    dense, bm25 = res["rprec"]["MiniLM (HNSW32)"], res["rprec"]["BM25"]
    assert set(dense) == set(bm25) == {"fever", "nq", "hotpotqa", "wow"}
    assert sum(dense.values()) / 4 > 0.6 and sum(bm25.values()) / 4 > 0.5
    guesses = work / "runs" / "index_and_search" / "guesses"
    assert sorted(p.name for p in guesses.iterdir()) == res["guess_files"]
    assert len(res["guess_files"]) == 8


@pytest.mark.slow  # 200 s on 2 cores; the README main job (CI) trains the same model and data
def test_quickstart(tmp_path):
    _, res, work = execute("quickstart.ipynb", tmp_path)
    run, retrieval = Path(res["model_dir"]), Path(res["retrieval_dir"])
    assert run.is_relative_to(work) and retrieval.is_relative_to(work)
    table = json.loads((run / "table.json").read_text())
    assert "BM25 page R-prec" in table
    trained = [r for r in table if r.startswith("trained") and r.endswith("page R-prec")]
    assert len(trained) == 1, list(table)
    for row in ("BM25 page R-prec", trained[0]):
        assert set(table[row]) == {"fever", "nq", "hotpotqa", "wow", "Avg"}
        assert all(0.0 <= v <= 100.0 for v in table[row].values())
    assert res["table"] == table
    results = json.loads((retrieval / "results.json").read_text())
    assert sorted(results["tasks"]) == ["fever", "hotpotqa", "nq", "wow"]
    png = run / "analysis" / "task_entropy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0.0 < res["mean_entropy"] <= res["max_entropy"] + 1e-6
    assert res["max_entropy"] == pytest.approx(math.log(4))
