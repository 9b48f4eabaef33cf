"""The accelerator default, bfloat16 compute (``DTYPE = "bfloat16"`` in models/t5_base.gin
and models/bert_base.gin): TACO's gin-configured model and update train with finite losses
close to float32's, while the parameters, AdamW's moments and TACO's EMA stay float32."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from multiret_jax import multitask
from multiret_jax.gin_utils import parse_gin
from multiret_jax.models.encoders import build_biencoder
from multiret_jax.train import train  # noqa: F401  (registers the gin configurable)
from multiret_jax.training.step import init_train_state, make_train_step
from test_train_step import MiniData

pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return MiniData(str(tmp_path_factory.mktemp("minikilt")))


def test_the_paper_model_files_default_to_bfloat16_on_accelerators():
    for name, dtype in (("taco.gin", "bfloat16"), ("mtdpr.gin", "bfloat16"),
                        ("taco_tiny.gin", "float32"), ("realmini_demo.gin", "float32")):
        gin.clear_config()
        parse_gin([name], [])
        assert gin.query_parameter("DTYPE/macro.value") == dtype, name


# the median by sort: the same value as the exact bisection, a far smaller program to compile
SORT = ("MULTITASK_OPTIONS = {'tau': 2.0, 'beta': 0.999, 'burn_in_fraction': 0.1, "
        "'median': 'sort'}")


def _train(dtype, batches):
    gin.clear_config()
    parse_gin(["taco_tiny.gin"], [f"DTYPE = '{dtype}'", SORT, "build_biencoder.config_overrides = "
                                  "{'vocab_size': 300, 'dropout_rate': 0.0}"])
    model, params, cfg = build_biencoder()
    assert cfg.dtype == dtype and cfg.param_dtype == "float32"
    tx = optax.chain(multitask.build_method(num_tasks=3, total_steps=len(batches)),
                     optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    step = make_train_step(model, tx, jnp.zeros((3,), jnp.int32), per_task="vmap")
    state = init_train_state(jax.tree_util.tree_map(np.asarray, params), tx)
    losses = []
    for b in batches:
        state, task_losses = step(state, b.arrays())
        losses.append(np.asarray(task_losses))
    q = model.encode_queries(state["params"], batches[0].query_ids[0],
                             batches[0].query_mask_tokens[0])
    return state, np.asarray(losses), q.dtype


@pytest.mark.slow  # ~70 s: compiling the T5 step; the bf16 unit tests above run by default
def test_bfloat16_taco_trains_with_float32_master_weights_and_state(mini):
    batches = [mini.batch(s) for s in range(3)]
    state, losses, emb_dtype = _train("bfloat16", batches)
    assert emb_dtype == jnp.bfloat16  # the encoder really computes in bfloat16
    assert np.isfinite(losses).all() and int(state["skipped"]) == 0
    for leaf in jax.tree_util.tree_leaves(state["params"]):
        assert leaf.dtype == jnp.float32
    taco = [s for s in state["opt_state"][0:1] if type(s).__name__ == "TacoState"][0]
    assert int(taco.step) == 3
    for leaf in jax.tree_util.tree_leaves(taco.ema):
        assert leaf.dtype == jnp.float32
    adam = state["opt_state"][2][0]
    for leaf in jax.tree_util.tree_leaves((adam.mu, adam.nu)):
        assert leaf.dtype == jnp.float32


@pytest.mark.slow  # two more compilations of the T5 step: 70 s
def test_bfloat16_losses_match_float32(mini):
    batches = [mini.batch(s) for s in range(3)]
    _, losses, _ = _train("bfloat16", batches)
    _, losses32, _ = _train("float32", batches)
    # the same computation at bfloat16's precision (~3 significant digits)
    np.testing.assert_allclose(losses, losses32, rtol=3e-2, atol=3e-2)
    assert not np.array_equal(losses, losses32)  # and not float32 under another name


def test_gradient_cache_with_bfloat16_embeddings_equals_the_plain_gradient():
    """The gradient cache feeds each chunk's cotangent back in the embeddings' dtype: with
    bfloat16 embeddings (the accelerator default) a float32 one made jax.vjp refuse."""
    from multiret_jax.training.gradcache import cached_value_and_grad
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((6, 4)), jnp.float32)}
    encode = lambda p, x, r: jnp.tanh(x.astype(jnp.bfloat16) @ p["w"].astype(jnp.bfloat16))
    q = jnp.asarray(rng.standard_normal((8, 6)), jnp.float32)
    d = jnp.asarray(rng.standard_normal((16, 6)), jnp.float32)

    def loss(qe, pe):
        s = qe.astype(jnp.float32) @ pe.astype(jnp.float32).T
        return -jnp.mean(jax.nn.log_softmax(s, axis=1)[jnp.arange(8), jnp.arange(8)])

    got_loss, got = jax.jit(lambda p: cached_value_and_grad(loss, encode, encode, p, q, d, 4))(
        params)
    want_loss, want = jax.value_and_grad(lambda p: loss(encode(p, q, None),
                                                        encode(p, d, None)))(params)
    assert got["w"].dtype == jnp.float32
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(got["w"], want["w"], rtol=2e-2, atol=2e-3)
