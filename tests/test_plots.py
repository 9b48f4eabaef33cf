"""TACO analysis plots (experiments/plots.py): histograms against NumPy, valid PNGs, and the
command line on a checkpoint written like train.py's (chain of taco, clipping, AdamW)."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from multiret_jax import multitask
from multiret_jax.experiments import plots
from multiret_jax.multitask import analysis
from multiret_jax.training.checkpointing import Checkpointer

pytest.importorskip("matplotlib")

K, TAU, BINS = 3, 1.0, 20
SHAPES = {"dense": {"kernel": (40, 30)}, "bias": (30,), "emb": (50, 8)}
PNG = b"\x89PNG\r\n\x1a\n"


def _entropy64(ema_leaves, tau):
    s = np.concatenate([np.asarray(x, np.float64).reshape(K, -1) for x in ema_leaves], axis=1)
    p = np.exp(s / tau - (s / tau).max(0))
    p /= p.sum(0)
    return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(0)


def _edges():
    return np.linspace(0.0, np.log(K) + 1e-6, BINS + 1)


def _ema(seed=0):
    """Log-normal sensitivities, some exact zeros, one task dominating some parameters; a
    parameter whose entropy falls within 1e-4 of an entropy bin edge gets equal values
    instead (H = log K), so float32 and float64 agree on every bin."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in jax.tree_util.tree_leaves_with_path(SHAPES, is_leaf=lambda x: isinstance(x, tuple)):
        key = "/".join(str(k.key) for k in name)
        x = rng.lognormal(0.0, 1.5, size=(K,) + shape).astype(np.float32)
        x[rng.random(x.shape) < 0.05] = 0.0
        dom = rng.random(shape) < 0.2
        x[0][dom] *= 30.0
        flat = x.reshape(K, -1)
        h = _entropy64([flat], TAU)
        near = np.min(np.abs(h[:, None] - _edges()[None, :-1]), axis=1) < 1e-4
        flat[:, near] = 1.0
        out[key] = flat.reshape(x.shape)
    return out


def test_write_analysis_matches_numpy(tmp_path):
    ema = _ema()
    names = ["nq", "fever", "wow"]
    stats = plots.write_analysis(ema, str(tmp_path), TAU, names, bins=BINS, sensitivity_bins=30)
    leaves = jax.tree_util.tree_leaves(ema)
    h = _entropy64(leaves, TAU)
    assert stats["num_params"] == h.size == 40 * 30 + 30 + 50 * 8
    assert stats["mean_entropy"] == pytest.approx(h.mean(), rel=1e-5)
    assert stats["frac_task_specific"] == pytest.approx(np.mean(h < 0.3))
    flat = np.concatenate([x.reshape(K, -1) for x in leaves], axis=1).astype(np.float64)
    assert stats["task_mean"] == pytest.approx(flat.mean(1), rel=1e-5)
    ent = json.load(open(tmp_path / "task_entropy.json"))
    np.testing.assert_allclose(ent["edges"], _edges(), rtol=0, atol=1e-12)
    assert ent["counts"] == np.histogram(h, bins=_edges())[0].tolist()
    assert ent["counts"][-1] > 0 and ent["counts"][0] > 0  # uniform and dominated parameters
    sens = json.load(open(tmp_path / "sensitivity.json"))
    assert sens["tasks"] == names
    f32 = np.concatenate([x.reshape(K, -1) for x in leaves], axis=1)
    pos = f32[f32 > 0]
    edges = np.asarray(sens["edges"])
    assert edges[0] == pos.min() and edges[-1] == pos.max()
    np.testing.assert_allclose(edges, np.geomspace(pos.min(), pos.max(), 31), rtol=1e-12)
    for t in range(K):
        assert sens["counts"][t] == np.histogram(f32[t][f32[t] > 0], bins=edges)[0].tolist()
        assert sens["zeros"][t] == int(np.sum(f32[t] == 0)) > 0
    assert json.load(open(tmp_path / "stats.json"))["tasks"] == names
    from matplotlib import image
    for png, size in (("task_entropy.png", (400, 600)), ("sensitivity.png", (400, 700))):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == PNG and len(data) > 1000
        assert image.imread(str(tmp_path / png)).shape[:2] == size
    text = plots.format_summary(stats)
    assert f"mean task entropy {h.mean():.4f}" in text and "fever" in text


def test_write_entropy_histogram(tmp_path):
    path = plots.write_entropy_histogram(_ema(), str(tmp_path / "h.png"), TAU, bins=BINS)
    data = open(path, "rb").read()
    assert len(data) > 1000 and data[:8] == PNG


def test_normalize_divides_by_the_task_median(tmp_path):
    ema = _ema(1)
    f32 = np.concatenate([x.reshape(K, -1) for x in jax.tree_util.tree_leaves(ema)], axis=1)
    med = np.median(f32.astype(np.float64), axis=1)
    counts, zeros, edges = analysis.sensitivity_histogram(ema, bins=10, normalize=True)
    norm = f32 / med[:, None]
    assert edges[0] == pytest.approx(norm[norm > 0].min(), rel=1e-5)
    assert edges[-1] == pytest.approx(norm.max(), rel=1e-5)
    assert zeros.tolist() == np.sum(f32 == 0, axis=1).tolist()
    assert counts.sum(1).tolist() == np.sum(f32 > 0, axis=1).tolist()


def _save_run(model_dir, method, ema=None):
    params = jax.tree_util.tree_map(lambda s: jnp.ones(s, jnp.float32), SHAPES,
                                    is_leaf=lambda x: isinstance(x, tuple))
    mt = multitask.build_method(method, num_tasks=K)
    tx = optax.chain(mt, optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    opt = tx.init(params)
    if ema is not None:  # the EMA train.py would have accumulated
        tree = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params),
                                            [jnp.asarray(ema[k]) for k in ("bias", "dense/kernel", "emb")])
        opt = (opt[0]._replace(ema=tree, step=jnp.asarray(7, jnp.int32)),) + tuple(opt[1:])
    state = {"params": params, "opt_state": opt, "step": jnp.asarray(7, jnp.int32),
             "rng": jax.random.PRNGKey(0), "skipped": jnp.zeros([], jnp.int32)}
    with Checkpointer(str(model_dir / "checkpoints"), best_metric="avg_page_rprec") as ck:
        ck.save(7, state, {"episode": 0}, metrics={"avg_page_rprec": 0.5})
        ck.wait()
    (model_dir / "summary.json").write_text(json.dumps({"tasks": ["nq", "fever", "wow"]}))


def test_load_taco_state_and_cli(tmp_path):
    ema = _ema()
    assert sorted(ema) == ["bias", "dense/kernel", "emb"]
    _save_run(tmp_path / "run", "taco", ema)
    state, step = plots.load_taco_state(str(tmp_path / "run"), "best")
    assert step == 7 and int(state.step) == 7
    got = {"/".join(str(k.key) for k in p): x
           for p, x in jax.tree_util.tree_leaves_with_path(state.ema)}
    for key, x in ema.items():
        np.testing.assert_array_equal(got[key], x)
    out = subprocess.run(
        [sys.executable, "-m", "multiret_jax.experiments.plots",
         f"--model_dir={tmp_path / 'run'}",
         f"--out_dir={tmp_path / 'a'}", f"--bins={BINS}", "--gin_file=taco_tiny.gin",
         '--gin_param=MULTITASK_OPTIONS = {"tau": 1.0, "burn_in_fraction": 0.1}'],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    h = _entropy64(jax.tree_util.tree_leaves(ema), TAU)
    assert "checkpoint step 7" in out.stdout and f"mean task entropy {h.mean():.4f}" in out.stdout
    assert json.load(open(tmp_path / "a" / "task_entropy.json"))["counts"] == \
        np.histogram(h, bins=_edges())[0].tolist()
    assert json.load(open(tmp_path / "a" / "sensitivity.json"))["tasks"] == ["nq", "fever", "wow"]
    assert (tmp_path / "a" / "task_entropy.png").read_bytes()[:8] == PNG
    stats = json.load(open(tmp_path / "a" / "stats.json"))
    assert stats["tau"] == 1.0 and stats["normalize"] is False  # from the run's gin (default 2)


def test_not_a_taco_run(tmp_path):
    _save_run(tmp_path / "naive", "naive")
    with pytest.raises(ValueError, match="holds no TACO state"):
        plots.load_taco_state(str(tmp_path / "naive"))
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 3"):
        plots.load_taco_state(str(tmp_path / "naive"), 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        plots.load_taco_state(str(tmp_path / "empty"))
    assert plots.task_names_of(str(tmp_path / "empty"), 2) == ["task0", "task1"]
