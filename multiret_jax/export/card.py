"""The README of an export: where each tower is, how queries and passages must be written
(prefix / marker, length, mention window), how to compute an embedding with
``transformers`` or ``sentence-transformers``, and the run's validation figures."""

from __future__ import annotations

from typing import Any, Dict, List

from multiret_jax.export.plan import ExportPlan

_POOLING = {
    "cls": "the first ([CLS]) token's final hidden state",
    "mean": "the mean of the final hidden states over the attention mask",
    "encdec": "ST5-EncDec: ONE decoder step from the start token (id {start}) cross-attending "
              "to the encoder; the decoder's final (layer-normed) hidden state, no LM head",
}


def _where(path: str) -> str:
    return f"`{path}/`" if path else "this directory"


def _queries(plan: ExportPlan) -> List[str]:
    fmt = plan.run.marker
    lines = ["## Queries", ""]
    if fmt.marker == "none":
        lines.append("Queries are the task's input as it is (no prefix or marker).")
    else:
        what = "dataset prefix" if fmt.marker == "prefix" else "task-type marker"
        lines.append(f"Every query starts with its task's {what} (marker format "
                     f"`{fmt.marker_format}`): the model only reproduces the trained run's "
                     "retrieval when queries are written exactly so.")
    tower_of = {t: tw.path for tw in plan.towers for t in tw.tasks}
    lines += ["", "| task | query text | max tokens | query tower |", "|---|---|---|---|"]
    for t in plan.tasks:
        lines.append(f"| {t.name} | `{plan.prompts[t.name] + '<input>'}` | "
                     f"{plan.query_lens[t.name]} | {_where(tower_of.get(t.name, ''))} |")
    mention = [t for t in plan.tasks if t.window == "mention"]
    for t in mention:
        lines.append(f"\n{t.name}: before the prefix, cut the input to the {t.max_query_len} "
                     "words centred on `[START_ENT] ... [END_ENT]` "
                     "(`multiret_jax.data.tasks.mention_window`).")
    lines += ["", "Token lengths count the special tokens; longer queries are cut at the end "
              "(`truncation=True, max_length=<max tokens>`)."]
    return lines


def _usage(plan: ExportPlan) -> List[str]:
    run, norm = plan.run, plan.run.model.normalize
    passage = next(tw for tw in plan.towers if tw.role != "query")
    q = next((tw for tw in plan.towers if tw.tasks), passage)
    task = q.tasks[0] if q.tasks else (plan.tasks[0].name if plan.tasks else "")
    pool = _POOLING[plan.pooling].format(start=getattr(run.cfg, "decoder_start_token_id", 0))
    lines = ["## Embeddings", "",
             f"Passages ({_where(passage.path)}) are `title + \" \" + text`, at most "
             f"{run.passage_len} tokens. An embedding ({plan.hidden_size} floats) is {pool}"
             + (", L2-normalised" if norm else "") + "; relevance is the dot product"
             + (" (cosine)." if norm else "."), "", "```python",
             "import torch"]
    q_len = plan.query_lens.get(task, run.passage_len)
    cls = ("T5Model" if plan.pooling == "encdec" else
           "T5EncoderModel" if plan.encoder == "t5" else "AutoModel")
    extra = ", add_pooling_layer=False" if plan.encoder == "bert" else ""
    lines += [f"from transformers import AutoTokenizer, {cls}",
              f"model = {cls}.from_pretrained(DIR{extra}).eval()  # DIR: a tower directory",
              "tok = AutoTokenizer.from_pretrained(DIR)",
              f"batch = tok([{plan.prompts.get(task, '')!r} + query], truncation=True, "
              f"max_length={q_len}, padding=True, return_tensors=\"pt\")",
              f"# passages: the passage tower, no prefix, max_length={run.passage_len}",
              "ids, mask = batch.input_ids, batch.attention_mask", "with torch.no_grad():"]
    if plan.pooling == "encdec":
        lines += ["    start = torch.full((ids.shape[0], 1), model.config.decoder_start_token_id)",
                  "    emb = model(input_ids=ids, attention_mask=mask,",
                  "                decoder_input_ids=start).last_hidden_state[:, 0]"]
    else:
        lines.append("    h = model(input_ids=ids, attention_mask=mask).last_hidden_state")
        lines.append("emb = h[:, 0]" if plan.pooling == "cls" else
                     "m = mask[..., None].float()\nemb = (h * m).sum(1) / m.sum(1).clamp(min=1)")
    if norm:
        lines.append("emb = torch.nn.functional.normalize(emb, dim=-1)")
    lines.append("```")
    if plan.encoder == "bert":
        lines += ["", "No BERT pooler is exported (it is not used): loading without "
                  "`add_pooling_layer=False` reports `pooler.*` as newly initialised."]
    if plan.fmt == "sentence-transformers":
        lines += ["", "With sentence-transformers (the prompts are the task prefixes above; the "
                  "query length differs per task, so set it before encoding a task's queries):",
                  "", "```python", "from sentence_transformers import SentenceTransformer",
                  "q = SentenceTransformer(DIR)",
                  f"q.max_seq_length = {q_len}",
                  f"emb = q.encode(queries, prompt_name={task!r})",
                  "```"]
    elif plan.pooling == "encdec":
        lines += ["", "sentence-transformers has no ST5-EncDec pooling: use the code above "
                  "(`T5Model` with the one decoder step)."]
    return lines


def _figure(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _validation(summary: Dict[str, Any]) -> List[str]:
    val = summary.get("validation")
    lines = ["## Validation (the run's `summary.json`)", ""]
    if not val:
        return lines + ["The run recorded no validation."]
    corpus = (val.get("corpus") or {}).get("label", "")
    lines += [f"After {summary.get('completed_steps')} steps, on the dev sets"
              + (f" ({corpus})" if corpus else "") + f": average page R-precision "
              f"{_figure(val.get('avg_page_rprec'))}.", "",
              "| task | queries | page R-prec | passage R-prec | recall@5 |",
              "|---|---|---|---|---|"]
    for name, m in (val.get("tasks") or {}).items():
        lines.append(f"| {name} | {m.get('num_queries', '-')} | {_figure(m.get('page_rprec'))} "
                     f"| {_figure(m.get('passage_rprec'))} | {_figure(m.get('recall@5'))} |")
    return lines


def readme(plan: ExportPlan) -> str:
    """The export's README.md."""
    towers = [f"- {_where(tw.path)}: {tw.role} tower"
              + (f" (queries of {', '.join(tw.tasks)})" if tw.tasks else "")
              for tw in plan.towers]
    kind = {"hf": "Hugging Face `transformers`",
            "sentence-transformers": "sentence-transformers (and `transformers`)"}[plan.fmt]
    model = ("a `T5Model` (encoder and decoder)" if plan.pooling == "encdec" else
             "a T5 encoder" if plan.encoder == "t5" else "a `BertModel`")
    lines = [f"# Dense retriever exported from `{plan.run.model_dir}`", "",
             f"Exported by `python -m multiret_jax.export` for {kind}. Each tower is {model} "
             "with the run's tokenizer:", "", *towers, "", *_queries(plan), "", *_usage(plan),
             "", *_validation(plan.summary), ""]
    return "\n".join(lines)
