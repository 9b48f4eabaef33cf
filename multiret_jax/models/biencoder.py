"""Query/passage towers of a dense retriever, with dot-product similarity.

One Flax module maps ``(input_ids, attention_mask, deterministic)`` to embeddings [B, D]
(a pooled BERT or T5 ST5-EncDec, see ``encoders.py``). ``BiEncoder`` arranges its
parameters in the layouts the papers use:

* shared tower (TACO): ``{"shared": p}``, queries and passages through the same weights;
* separate towers (DPR, MT-DPR): ``{"query": p_q, "passage": p_p}``;
* task-specific query towers (the MT-DPR/TACO ablation): ``{"query": stacked, "passage":
  p_p}``, the query parameters stacked on a leading "towers" axis, one tower per task or
  per task type; a (possibly traced) tower index selects one, so the same jitted step
  serves every task and ``jax.vmap`` over tasks works.

Queries are formatted by the task registry (prefix ``"NQ [SEP] q"``, type marker ``"QA [SEP]
q"`` or none) before tokenization, so every variant runs through the same code.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from multiret_jax.data.tasks import Task

Params = Dict[str, Any]


class BiEncoder:
    """Query and passage towers around one embedding module.

    Args:
      module: Flax module, ``module(input_ids, attention_mask, deterministic) -> [B, D]``.
      shared: one tower for queries and passages (TACO) instead of two (DPR, MT-DPR).
      query_towers: names of task-specific query towers (task names, or task types when
        ``tower_by="type"``); None or one name means a single query tower.
      tower_by: "task" or "type": how a task picks its query tower.
      normalize: L2-normalise the embeddings (cosine similarity; pair with an NCE
        temperature such as 0.05), e.g. sentence-transformers' all-MiniLM-L6-v2 head.
      source_dir: the checkpoint directory the parameters were loaded from (its
        tokenizer files go with them), or None.
    """

    def __init__(self, module: nn.Module, *, shared: bool = False,
                 query_towers: Optional[Sequence[str]] = None, tower_by: str = "task",
                 normalize: bool = False, source_dir: Optional[str] = None):
        if tower_by not in ("task", "type"):
            raise ValueError(f"tower_by must be 'task' or 'type', got {tower_by!r}")
        self.module = module
        self.tower_names = tuple(query_towers or ())
        self.stacked = len(self.tower_names) > 1
        self.shared = shared and not self.stacked
        self.tower_by = tower_by
        self.normalize = normalize
        self.source_dir = source_dir

    # -- parameters
    def init_encoder(self, rng: jax.Array, seq_len: int = 8) -> Any:
        """One tower's freshly initialised (boxed, logically annotated) variables."""
        ids = jnp.zeros((1, seq_len), jnp.int32)
        return self.module.init(rng, ids, jnp.ones_like(ids), True)

    def layout(self, encoder_params: Any) -> Params:
        """Builds this bi-encoder's parameter layout from ONE tower's params (random or
        pretrained): copies it into every tower."""
        if self.shared:
            return {"shared": encoder_params}
        q = encoder_params
        if self.stacked:
            n = len(self.tower_names)
            q = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), q)
        # Separate buffers per tower (the train step donates its state).
        return {"query": q, "passage": jax.tree_util.tree_map(jnp.array, encoder_params)}

    def init(self, rng: jax.Array, seq_len: int = 8) -> Params:
        """Randomly initialised parameters (unboxed arrays) in this layout."""
        return self.layout(nn.unbox(self.init_encoder(rng, seq_len)["params"]))

    def logical_specs(self, seq_len: int = 8) -> Params:
        """PartitionSpecs of logical axis names for ``init``'s tree (stacked towers get a
        leading "towers" axis); feed to ``partitioning.logical_shardings``."""
        boxed = jax.eval_shape(lambda r: self.init_encoder(r, seq_len), jax.random.PRNGKey(0))
        spec = nn.get_partition_spec(boxed)["params"]
        if self.shared:
            return {"shared": spec}
        query = spec
        if self.stacked:
            query = jax.tree_util.tree_map(lambda s: P("towers", *s), spec,
                                           is_leaf=lambda x: isinstance(x, P))
        return {"query": query, "passage": spec}

    # -- towers
    def tower_index(self, task: Task) -> int:
        """Index of ``task``'s query tower (0 when there is a single tower)."""
        if not self.stacked:
            return 0
        key = task.name if self.tower_by == "task" else task.task_type
        try:
            return self.tower_names.index(key)
        except ValueError:
            raise KeyError(f"no query tower for {self.tower_by} {key!r}; towers: "
                           f"{self.tower_names}") from None

    def query_params(self, params: Params, tower: Any = 0) -> Any:
        if self.shared:
            return params["shared"]
        if self.stacked:
            return jax.tree_util.tree_map(lambda x: x[tower], params["query"])
        return params["query"]

    def passage_params(self, params: Params) -> Any:
        return params["shared"] if self.shared else params["passage"]

    def encode_queries(self, params: Params, input_ids: jax.Array, attention_mask: jax.Array,
                       tower: Any = 0, deterministic: bool = True,
                       rngs: Optional[Dict[str, jax.Array]] = None) -> jax.Array:
        """Query embeddings [B, D] through query tower ``tower`` (an int or traced int)."""
        return self._finish(self.module.apply({"params": self.query_params(params, tower)},
                                              input_ids, attention_mask, deterministic, rngs=rngs))

    def encode_passages(self, params: Params, input_ids: jax.Array, attention_mask: jax.Array,
                        deterministic: bool = True,
                        rngs: Optional[Dict[str, jax.Array]] = None) -> jax.Array:
        """Passage embeddings [B, D]."""
        return self._finish(self.module.apply({"params": self.passage_params(params)}, input_ids,
                                              attention_mask, deterministic, rngs=rngs))

    def _finish(self, emb: jax.Array) -> jax.Array:
        if not self.normalize:
            return emb
        x = emb.astype(jnp.float32)
        # rsqrt of a floored square norm: an all-padding row (zero vector) stays zero with a
        # zero gradient; dividing by max(sqrt(.), eps) would give 0/0 = NaN gradients there.
        x = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))
        return x.astype(emb.dtype)

    @staticmethod
    def score(queries: jax.Array, passages: jax.Array) -> jax.Array:
        """Dot-product similarities [Q, P] in float32."""
        return jnp.einsum("qd,pd->qp", queries.astype(jnp.float32), passages.astype(jnp.float32))
