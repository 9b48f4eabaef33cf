"""Writes an ``ExportPlan``: every tower as an HF directory (+ sentence-transformers
modules), the tokenizer in each, the README and ``multiret_export.json``.

Everything is written into a staging directory inside ``out_dir`` and swapped in at the
end (``outputs.staged``): a failure leaves the previous contents whole. Entries of
``out_dir`` that this export did not write (a previous export's other towers) are removed
after the swap; ``plan.check_out_dir`` admits only an empty directory or an export.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, List

from multiret_jax.data.tokenization import Tokenization
from multiret_jax.export.card import readme
from multiret_jax.export.plan import MANIFEST, ExportPlan, Tower, plan_export
from multiret_jax.models.encoders import get_encoder
from multiret_jax.outputs import STAGING_PREFIX, staged, write_text

# tokenizer_config.json keys -> the token strings that fill them, first found wins
_SPECIAL_TOKENS = {"pad_token": ("[PAD]", "<pad>"), "unk_token": ("[UNK]", "<unk>"),
                   "cls_token": ("[CLS]",), "sep_token": ("[SEP]",), "mask_token": ("[MASK]",),
                   "eos_token": ("</s>",)}


def _json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_tokenizer(tok: Tokenization, directory: str, max_len: int) -> None:
    """``tokenizer.json`` (the run's own tokenizer, exactly as it encodes) and a
    ``tokenizer_config.json`` that ``AutoTokenizer`` loads it with."""
    tok.save(directory)
    cfg: Dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                           "model_max_length": int(max_len),
                           "clean_up_tokenization_spaces": False}
    for key, names in _SPECIAL_TOKENS.items():
        found = [n for n in names if tok.tokenizer.token_to_id(n) is not None]
        if found:
            cfg[key] = found[0]
    cfg.setdefault("pad_token", tok.tokenizer.id_to_token(tok.pad_id))
    _json(os.path.join(directory, "tokenizer_config.json"), cfg)


def max_tokens(plan: ExportPlan, tower: Tower) -> int:
    """The truncation length of a tower's inputs: passages' for a passage or shared tower,
    the longest of its tasks' query lengths for a query tower."""
    if tower.role != "query":
        return int(plan.run.passage_len)
    return int(max((plan.query_lens[t] for t in tower.tasks),
                   default=plan.run.query_len or plan.run.passage_len))


def write_sentence_transformers(plan: ExportPlan, tower: Tower, directory: str) -> None:
    """``modules.json`` (Transformer, Pooling[, Normalize]), their configs and
    ``config_sentence_transformers.json`` whose prompts are the tower's task prefixes."""
    modules = [("", "Transformer"), ("1_Pooling", "Pooling")]
    if plan.run.model.normalize:
        modules.append(("2_Normalize", "Normalize"))
    _json(os.path.join(directory, "modules.json"),
          [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{t}"}
           for i, (path, t) in enumerate(modules)])
    _json(os.path.join(directory, "sentence_bert_config.json"),
          {"max_seq_length": max_tokens(plan, tower), "do_lower_case": False})
    _json(os.path.join(directory, "1_Pooling", "config.json"), {
        "word_embedding_dimension": plan.hidden_size,
        "pooling_mode_cls_token": plan.pooling == "cls",
        "pooling_mode_mean_tokens": plan.pooling == "mean",
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "include_prompt": True})  # training's mean pools the prefix tokens too
    _json(os.path.join(directory, "config_sentence_transformers.json"), {
        "prompts": {t: plan.prompts[t] for t in tower.tasks}, "default_prompt_name": None,
        "similarity_fn_name": "cosine" if plan.run.model.normalize else "dot"})


def manifest(plan: ExportPlan) -> Dict[str, Any]:
    """``multiret_export.json``: the run, the towers and how to write each task's queries."""
    run = plan.run
    tower_of = {t: tw.path for tw in plan.towers for t in tw.tasks}
    passage = next(tw.path for tw in plan.towers if tw.role != "query")
    return {
        "format": plan.fmt, "model_dir": run.model_dir, "fingerprint": run.fingerprint,
        "encoder": plan.encoder, "pooling": plan.pooling,
        "normalize": bool(run.model.normalize), "embedding_dim": plan.hidden_size,
        "similarity": "dot product" + (" of L2-normalised embeddings (cosine)"
                                       if run.model.normalize else ""),
        "query_format": {"marker": run.marker.marker, "marker_format": run.marker.marker_format,
                         "marker_in_query_len": run.marker.marker_in_len},
        "passages": {"text": "title + ' ' + text", "max_tokens": int(run.passage_len),
                     "tower": passage},
        "tasks": {t.name: {"prompt": plan.prompts[t.name],
                           "max_query_tokens": plan.query_lens[t.name],
                           "tower": tower_of.get(t.name),
                           "mention_window_words": (t.max_query_len if t.window == "mention"
                                                    else None)}
                  for t in plan.tasks},
        "towers": [{"path": tw.path, "role": tw.role, "tasks": tw.tasks} for tw in plan.towers],
        "validation": plan.summary.get("validation"),
    }


def write_export(plan: ExportPlan) -> List[str]:
    """Writes the export into ``plan.out_dir``; returns the tower directories written."""
    spec = get_encoder(plan.encoder)
    cfg, out = plan.run.cfg, plan.out_dir
    tok_len = (getattr(cfg, "max_position_embeddings", None)
               or max([plan.run.passage_len, *plan.query_lens.values()]))
    with staged(out) as stage:
        for tower in plan.towers:
            d = os.path.join(stage, tower.path)
            spec.export(tower.params, cfg, d)
            write_tokenizer(plan.run.tokenizer, d, tok_len)
            if plan.fmt == "sentence-transformers":
                write_sentence_transformers(plan, tower, d)
        write_text(os.path.join(stage, "README.md"), readme(plan))
        _json(os.path.join(stage, MANIFEST), manifest(plan))  # last: a complete export
        written = set(os.listdir(stage))
    for name in sorted(set(os.listdir(out)) - written):  # not this export's
        path = os.path.join(out, name)
        if name.startswith(STAGING_PREFIX):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    return [os.path.join(out, t.path) for t in plan.towers]


def export_run(model_dir: str, out_dir: str, fmt: str = "hf", overwrite: bool = False,
               gin_files=(), gin_params=(), params_path=None) -> ExportPlan:
    """Checks everything (``plan.plan_export``), then writes the export; returns the plan."""
    plan = plan_export(model_dir, out_dir, fmt, overwrite, gin_files, gin_params, params_path)
    write_export(plan)
    return plan
