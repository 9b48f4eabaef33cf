"""``python -m multiret_jax.export``: a trained run's towers, loaded back by the reference
libraries themselves (``transformers``, ``sentence-transformers``) from the exported files,
give our embeddings within 1e-5 and the same top-10 passages.

Default: a tiny BERT trained for real (``train()``, separate query and passage towers,
dataset prefixes), exported with the CLI in the sentence-transformers format; tiny T5 runs
as ``train.py`` leaves them, parameters random (a T5 train step takes minutes to compile
on CPU): ST5-EncDec with a query tower per task (hf only: a ``T5Model`` and one decoder
step) and ST5-Enc (mean pooling, sentence-transformers); a shared tower holding MiniLM's
checkpoint parameters (its WordPiece tokenizer, [CLS] pooling); the errors and the
overwrite rules. Slow: all-MiniLM-L6-v2 fine-tuned with ``train()`` (its train step
compiles for minutes on CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gin
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from multiret_jax.data import kilt
from multiret_jax.data.passages import PassageTable
from multiret_jax.data.tasks import get_task
from multiret_jax.data.tokenization import Tokenization
from multiret_jax.encoding import encode_passages_of, encode_queries_of
from multiret_jax.export.plan import MANIFEST, plan_export
from multiret_jax.export.write import export_run
from multiret_jax.gin_utils import parse_gin
from multiret_jax.index.mine import exact_search
from multiret_jax.models.encoders import build_biencoder
from multiret_jax.models.params_io import flat_numpy
from multiret_jax.run_dir import load_run, parse_run_config, run_table
from multiret_jax.train import train

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("nq", "fever")
TOL = 1e-5
SHORT = ["TRAIN_STEPS = 2", "BATCH_SIZE = 16", "EVAL_EVERY = 2", "COMPARE_BM25 = False",
         "MARKER = 'prefix'", f"TASKS = {list(TASKS)}", f"train.val_tasks = {list(TASKS)}",
         "train.minikilt_scale = 0.3", "PASSAGE_LEN = 32", "QUERY_LEN = 16",
         "train.val_pool_size = 400"]

pytestmark = pytest.mark.usefixtures("clean_gin")


# ------------------------------------------------------------------ references
def _ours(run_dir, n=None):
    """Our embeddings of the run's passages and of each task's dev queries (the encoding
    path of validation and retrieval), with the texts; the first ``n`` of each if given."""
    parse_run_config(str(run_dir))
    run = load_run(str(run_dir))
    table, data_dir = run_table(str(run_dir))
    if n:
        table = PassageTable(table.ids[:n], table.page_ids[:n], table.titles[:n],
                             table.texts[:n], table.spans[:n])
    passages = encode_passages_of(run.model, run.params, run.tokenizer, table,
                                  run.passage_len, progress=False)
    queries = {}
    for name in TASKS:
        task = get_task(name)
        records = kilt.read_task_file(os.path.join(data_dir, task.filename("dev")))
        texts = [r.input for r in records][:n]
        queries[name] = (texts, encode_queries_of(run.model, run.params, run.tokenizer, task,
                                                  texts, run.marker, run.query_len,
                                                  progress=False))
    gin.clear_config()
    return {"passages": (table.contents(), passages), "queries": queries}


def _hf(directory, texts, max_len, pooling, normalize, t5=False):
    """Embeddings by ``transformers`` from an exported tower, as the export's README says."""
    tok = transformers.AutoTokenizer.from_pretrained(str(directory))
    batch = tok(list(texts), truncation=True, max_length=max_len, padding=True,
                return_tensors="pt")
    with torch.no_grad():
        if pooling == "encdec":
            model = transformers.T5Model.from_pretrained(str(directory)).eval()
            start = torch.full((len(texts), 1), model.config.decoder_start_token_id)
            emb = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        decoder_input_ids=start).last_hidden_state[:, 0]
        else:
            model = (transformers.T5EncoderModel.from_pretrained(str(directory)) if t5 else
                     transformers.AutoModel.from_pretrained(str(directory),
                                                            add_pooling_layer=False)).eval()
            h = model(input_ids=batch.input_ids,
                      attention_mask=batch.attention_mask).last_hidden_state
            m = batch.attention_mask[..., None].float()
            emb = h[:, 0] if pooling == "cls" else (h * m).sum(1) / m.sum(1).clamp(min=1)
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
    return emb.numpy()


def _st(directory, texts, prompt_name=None, max_len=None):
    """Embeddings by ``SentenceTransformer.encode`` (prompts from the export's config)."""
    model = sentence_transformers.SentenceTransformer(str(directory), device="cpu")
    if max_len:
        model.max_seq_length = max_len
    return model.encode(list(texts), prompt_name=prompt_name, batch_size=64,
                        convert_to_numpy=True)


def _manifest(out):
    return json.loads((Path(out) / MANIFEST).read_text())


def _check_export(out, ours, embed):
    """Every tower's embeddings (``embed(directory, texts, max_len, task)``) equal ours
    within TOL, and retrieval with them returns our top-10 for every task."""
    man = _manifest(out)
    texts, ref_p = ours["passages"]
    emb_p = embed(Path(out) / man["passages"]["tower"], texts, man["passages"]["max_tokens"],
                  None)
    assert emb_p.shape == ref_p.shape
    np.testing.assert_allclose(emb_p, ref_p, atol=TOL, rtol=0)
    for task, (queries, ref_q) in ours["queries"].items():
        info = man["tasks"][task]
        emb_q = embed(Path(out) / info["tower"], queries, info["max_query_tokens"], task)
        np.testing.assert_allclose(emb_q, ref_q, atol=TOL, rtol=0)
        ours_top, _ = exact_search(ref_q, ref_p, 10)
        their_top, _ = exact_search(emb_q, emb_p, 10)
        np.testing.assert_array_equal(their_top, ours_top)


def _hf_embed(man):
    def embed(directory, texts, max_len, task):
        prompt = man["tasks"][task]["prompt"] if task else ""
        return _hf(directory, [prompt + t for t in texts], max_len, man["pooling"],
                   man["normalize"], man["encoder"] == "t5")
    return embed


def _st_embed(directory, texts, max_len, task):
    return _st(directory, texts, task, max_len)


# ------------------------------------------------------------------ the trained tiny run
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1-layer tiny BERT (MT-DPR: separate query and passage towers) trained for 2 steps
    with dataset prefixes, mean pooling, L2-normalised; exported with the CLI
    (sentence-transformers format)."""
    root = tmp_path_factory.mktemp("export_tiny")
    parse_gin(["mtdpr_tiny.gin"],
              SHORT + ["TINY_OVERRIDES = {'vocab_size': 4096, 'num_layers': 1}"])
    summary = train(model_dir=str(root / "run"))
    gin.clear_config()
    out = root / "export"
    proc = subprocess.run([sys.executable, "-m", "multiret_jax.export",
                           f"--model_dir={root / 'run'}", f"--out_dir={out}",
                           "--format=sentence-transformers"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "query  query tower: queries of nq, fever" in proc.stdout
    return {"run": root / "run", "out": out, "summary": summary, "ours": _ours(root / "run")}


def test_tiny_layout_prompts_and_readme(tiny):
    out, summary = tiny["out"], tiny["summary"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", MANIFEST, "passage", "query"]
    for tower, prompts in (("query", {"nq": "NQ [SEP] ", "fever": "FEVER [SEP] "}),
                           ("passage", {})):
        st_cfg = json.loads((out / tower / "config_sentence_transformers.json").read_text())
        assert st_cfg["prompts"] == prompts and st_cfg["similarity_fn_name"] == "cosine"
        assert (out / tower / "tokenizer.json").is_file()
        assert json.loads((out / tower / "1_Pooling" / "config.json").read_text())[
            "pooling_mode_mean_tokens"] is True
    readme = (out / "README.md").read_text()
    assert "`NQ [SEP] <input>`" in readme and "`FEVER [SEP] <input>`" in readme
    for task, m in summary["validation"]["tasks"].items():
        assert f"| {task} | {m['num_queries']} | {100 * m['page_rprec']:.2f} |" in readme
    assert f"{100 * summary['validation']['avg_page_rprec']:.2f}" in readme
    assert _manifest(out)["validation"] == summary["validation"]


def test_tiny_transformers_reproduces_our_embeddings_and_top10(tiny):
    _check_export(tiny["out"], tiny["ours"], _hf_embed(_manifest(tiny["out"])))


def test_tiny_sentence_transformers_reproduces_our_embeddings_and_top10(tiny):
    _check_export(tiny["out"], tiny["ours"], _st_embed)


def test_rerun_replaces_the_same_runs_export_and_refuses_others(tiny, tmp_path):
    run = str(tiny["run"])
    out = tmp_path / "out"
    export_run(run, str(out), "hf")
    (out / "query" / "stale.txt").write_text("from an older export")
    export_run(run, str(out), "hf")  # a previous export of the same run: replaced whole
    assert not (out / "query" / "stale.txt").exists()
    assert not (out / "passage" / "modules.json").exists()  # hf: no sentence-transformers files
    assert _manifest(out)["format"] == "hf"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an export"):
        plan_export(run, str(mine), "hf")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    with pytest.raises(FileExistsError, match="not an export"):  # overwrite or not
        plan_export(run, str(mine), "hf", overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    other = json.loads((out / "multiret_export.json").read_text())
    other["fingerprint"] = "another run"
    (out / "multiret_export.json").write_text(json.dumps(other))
    with pytest.raises(FileExistsError, match="another run"):
        plan_export(run, str(out), "hf")
    export_run(run, str(out), "hf", overwrite=True)  # an export of another run, replaced
    assert _manifest(out)["fingerprint"] != "another run"

    with pytest.raises(ValueError, match="holds the run"):
        plan_export(run, str(tiny["run"]), "hf", overwrite=True)
    with pytest.raises(ValueError, match="holds the run"):
        plan_export(run, str(tiny["run"].parent), "hf", overwrite=True)


def _copy_run(run, dst, skip=()):
    dst.mkdir()
    for name in ("config.gin", "final_params.safetensors", "summary.json", "tokenizer"):
        if name in skip:
            continue
        src = run / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    return dst


@pytest.mark.parametrize("missing, match", [
    ("config.gin", "config.gin: missing"),
    ("final_params.safetensors", "final_params.safetensors: missing"),
    ("summary.json", "summary.json: missing .*not finished"),
    ("tokenizer", "no tokenizer"),
])
def test_an_incomplete_run_is_named_and_nothing_is_written(tiny, tmp_path, missing, match):
    run = _copy_run(tiny["run"], tmp_path / "run", skip=(missing,))
    with pytest.raises((FileNotFoundError, ValueError), match=match):
        export_run(str(run), str(tmp_path / "out"), "sentence-transformers")
    assert not (tmp_path / "out").exists()


def test_an_unfinished_or_damaged_run_is_named(tiny, tmp_path):
    run = _copy_run(tiny["run"], tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps(dict(summary, completed_steps=1)))
    with pytest.raises(ValueError, match=r"summary.json: training stopped at step 1 of 2"):
        plan_export(str(run), str(tmp_path / "out"))
    (run / "summary.json").write_text(json.dumps(summary))
    params = load_file(str(run / "final_params.safetensors"))
    params.pop(sorted(params)[0])
    save_file(params, str(run / "final_params.safetensors"))
    with pytest.raises(ValueError, match="final_params.safetensors: parameter .* missing"):
        plan_export(str(run), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ runs as train.py leaves them
def _write_run(run, data_dir, bindings, own_vocab=True, vocab=400):
    """A run directory as ``train.py`` leaves it (config.gin, final_params.safetensors,
    tokenizer/, summary.json), its parameters those ``build_biencoder`` gives."""
    parse_gin([], bindings + [f"train.data_dir = '{data_dir}'"])
    model, params, _ = build_biencoder()
    run.mkdir()
    if own_vocab:  # else the checkpoint's tokenizer, as in training
        table, _ = run_table(str(run))
        Tokenization.train_wordlevel(table.contents(), vocab).save(str(run / "tokenizer"))
    save_file(flat_numpy(params), str(run / "final_params.safetensors"))
    (run / "config.gin").write_text(gin.config_str())
    gin.clear_config()
    val = {"avg_page_rprec": 0.25, "corpus": {"label": "all 968 passages"},
           "tasks": {t: {"num_queries": 3, "page_rprec": 0.25, "passage_rprec": None,
                         "recall@5": 0.5} for t in TASKS}}
    (run / "summary.json").write_text(json.dumps({"steps": 0, "completed_steps": 0,
                                                  "tasks": list(TASKS), "validation": val}))
    return run


@pytest.fixture(scope="module")
def t5_run(small_minikilt, tmp_path_factory):
    """A tiny T5, ST5-EncDec pooling, a query tower per task, task-type markers, random
    parameters."""
    run = tmp_path_factory.mktemp("export_t5") / "run"
    return _write_run(run, small_minikilt[0], [
        "build_biencoder.encoder = 't5'", "build_biencoder.config = 't5_tiny'",
        "build_biencoder.shared = False", "build_biencoder.seed = 1",
        f"build_biencoder.query_towers = {list(TASKS)}", "build_biencoder.tower_by = 'task'",
        "build_biencoder.config_overrides = {'vocab_size': 400}",
        "train.passage_len = 32", "train.query_len = 16", "train.marker = 'type'"])


def test_t5_encdec_exports_a_t5model_with_one_step_decoding(t5_run, tmp_path):
    with pytest.raises(ValueError, match="ST5-EncDec .* --format=hf"):
        plan_export(str(t5_run), str(tmp_path / "st"), "sentence-transformers")
    out = tmp_path / "hf"
    export_run(str(t5_run), str(out), "hf")
    man = _manifest(out)
    assert man["pooling"] == "encdec" and man["tasks"]["nq"]["prompt"] == "QA [SEP] "
    assert sorted(p.name for p in (out / "query").iterdir()) == ["fever", "nq"]
    assert man["tasks"]["fever"]["tower"] == "query/fever"
    for tower in ("query/nq", "query/fever", "passage"):
        config = json.loads((out / tower / "config.json").read_text())
        assert config["architectures"] == ["T5Model"]
    readme = (out / "README.md").read_text()
    assert "T5Model" in readme and "decoder_input_ids=start" in readme
    assert "sentence-transformers has no ST5-EncDec" in readme
    _check_export(out, _ours(t5_run), _hf_embed(man))
    other = _copy_run(t5_run, tmp_path / "other")  # the same run with other parameters
    params = load_file(str(other / "final_params.safetensors"))
    params["passage/t5/encoder/encoder_norm/scale"] += 1.0
    save_file(params, str(other / "final_params.safetensors"))
    with pytest.raises(FileExistsError, match="an export of another run"):
        plan_export(str(other), str(out), "hf")


def test_t5_mean_pooling_exports_for_sentence_transformers(small_minikilt, tmp_path):
    """ST5-Enc (mean pooling): a T5 encoder that sentence-transformers loads as it is."""
    run = _write_run(tmp_path / "run", small_minikilt[0], [
        "build_biencoder.encoder = 't5'", "build_biencoder.config = 't5_tiny'",
        "build_biencoder.pooling = 'mean'", "build_biencoder.shared = True",
        "build_biencoder.normalize = True", "build_biencoder.seed = 2",
        "build_biencoder.config_overrides = {'vocab_size': 400}",
        "train.passage_len = 32", "train.query_len = 16", "train.marker = 'prefix'",
        "train.marker_format = 'plain'"])
    out = tmp_path / "st"
    export_run(str(run), str(out), "sentence-transformers")
    man = _manifest(out)
    assert man["tasks"]["nq"]["prompt"] == "NQ "
    assert json.loads((out / "config.json").read_text())["architectures"] == ["T5EncoderModel"]
    ours = _ours(run)
    _check_export(out, ours, _st_embed)
    _check_export(out, ours, _hf_embed(man))


def test_minilm_checkpoint_run_shared_tower(minilm_dir, small_minikilt, tmp_path):
    """A shared MiniLM tower (its checkpoint's parameters, WordPiece tokenizer, [CLS]
    pooling, prefixes): both libraries reproduce our embeddings and top-10."""
    run = _write_run(tmp_path / "run", small_minikilt[0], [
        "build_biencoder.encoder = 'bert'", f"build_biencoder.checkpoint_dir = '{minilm_dir}'",
        "build_biencoder.shared = True", "build_biencoder.pooling = 'cls'",
        "train.passage_len = 32", "train.query_len = 16", "train.marker = 'prefix'"],
        own_vocab=False)
    out = tmp_path / "st"
    export_run(str(run), str(out), "sentence-transformers")
    assert (out / "modules.json").is_file() and (out / "model.safetensors").is_file()
    ours = _ours(run, n=100)
    _check_export(out, ours, _st_embed)
    _check_export(out, ours, _hf_embed(_manifest(out)))


# ------------------------------------------------------------------ fine-tuned MiniLM
@pytest.mark.slow  # ~2 min: compiling MiniLM's train step
def test_fine_tuned_minilm(minilm_dir, tmp_path):
    parse_gin(["models/minilm.gin", "runs/train.gin"], SHORT + [
        f"CHECKPOINT_DIR = '{minilm_dir}'", "BATCH_SIZE = 8", "PER_TASK = 'vmap'",
        "TEMPERATURE = 0.05", "LEARNING_RATE = 1e-4"])  # step 0 is warm-up (lr 0), step 1 not
    train(model_dir=str(tmp_path / "run"))
    gin.clear_config()
    out = tmp_path / "export"
    export_run(str(tmp_path / "run"), str(out), "sentence-transformers")
    trained = load_file(str(tmp_path / "run" / "final_params.safetensors"))
    start = load_file(str(Path(minilm_dir) / "model.safetensors"))
    assert not np.allclose(trained["shared/bert/embeddings/LayerNorm/bias"],
                           start["embeddings.LayerNorm.bias"])  # fine-tuned
    ours = _ours(tmp_path / "run", n=300)
    _check_export(out, ours, _st_embed)
    _check_export(out, ours, _hf_embed(_manifest(out)))
