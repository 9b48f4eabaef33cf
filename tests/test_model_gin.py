"""Model gin files resolve from gin_configs/ and build the described bi-encoders."""

import jax
import pytest

from multiret_jax.gin_utils import parse_gin
from multiret_jax.models import bert, t5
from multiret_jax.models.encoders import build_biencoder


pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.mark.parametrize("name,kind,shared", [("models/bert_tiny.gin", bert.BertConfig, False),
                                              ("models/t5_tiny.gin", t5.T5Config, True)])
def test_tiny_model_gin_builds(name, kind, shared):
    parse_gin([name], [])
    model, params, cfg = build_biencoder()
    assert isinstance(cfg, kind) and model.shared == shared
    assert set(params) == ({"shared"} if shared else {"query", "passage"})


@pytest.mark.parametrize("name", ["models/bert_base.gin", "models/t5_base.gin"])
def test_base_model_gin_names_paper_sizes(name):
    parse_gin([name], [])
    n = sum(x.size for x in jax.tree_util.tree_leaves(
        jax.eval_shape(lambda: build_biencoder()[1])))
    # BERT-base: ~110M per tower (two towers); T5-base encoder+decoder ~220M (one tower).
    assert (n / 2 if name.startswith("models/bert") else n) == pytest.approx(
        110e6 if name.startswith("models/bert") else 223e6, rel=0.05), n


def test_unknown_binding_fails_loudly():
    with pytest.raises(ValueError):
        parse_gin([], ["build_biencoder.no_such_arg = 1"])
