"""Bad input to every command line tool, as a new user would give it.

One table of cases. Each runs a CLI in-process exactly as its ``python -m`` entry point does
(``define_flags()`` then ``cli.run(main, TOOL)``; ``minikilt.main(argv)`` for the argparse
tool), from a working directory with relative paths, and asserts:

* exit status 2 and one line ``<tool>: error: ...`` on stderr (no traceback);
* that the line names what to fix (the file, line, field, binding or flag);
* that every file that existed before the call is byte-identical after it.

The workspace (module scope) holds a small generated mini-KILT (``mk/``), a finished tiny
TACO run (``run/``) and a copy of it without its final files, as if killed after its last
checkpoint (``half/``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import gin
import pytest
from absl import app, flags

from multiret_jax import cli
from multiret_jax.data import minikilt

FLAGS = flags.FLAGS

MODULES = {"train": "multiret_jax.train", "evaluate": "multiret_jax.evaluate",
           "retrieve": "multiret_jax.retrieve", "index.encode": "multiret_jax.index.encode",
           "compare": "multiret_jax.experiments.compare",
           "plots": "multiret_jax.experiments.plots",
           "zero_few_shot": "multiret_jax.experiments.zero_few_shot.__main__"}

TRAIN = ["--gin_file=taco_tiny.gin", "--gin_param=BATCH_SIZE=16", "--gin_param=ANCE_EPISODES=0",
         "--gin_param=EVAL_EVERY=4", "--gin_param=CHECKPOINT_EVERY=2",
         "--gin_param=COMPARE_BM25=False", "--gin_param=TRAIN_STEPS=4"]


def run_cli(tool: str, args: Sequence[str]) -> int:
    """Runs ``python -m <tool's module> args`` in this process; returns the exit status."""
    if tool == "minikilt":
        try:
            minikilt.main(list(args))
        except SystemExit as e:
            return e.code
        return 0
    module = importlib.import_module(MODULES[tool])
    app.define_help_flags()
    before = set(FLAGS)
    saved_argv = sys.argv
    sys.argv = [tool, *args]
    try:
        module.define_flags()
        cli.run(module.main, module.TOOL)
        code = 0
    except SystemExit as e:
        code = 0 if e.code is None else e.code
    finally:
        sys.argv = saved_argv
        for name in set(FLAGS) - before:
            delattr(FLAGS, name)
        FLAGS.unparse_flags()
        gin.clear_config()
    return code


def digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    minikilt.generate(str(ws / "mk"), scale=0.05, seed=0)
    cwd = Path.cwd()
    os.chdir(ws)
    try:
        data = f"--gin_param=DATA_DIR='{ws / 'mk'}'"
        assert run_cli("train", [*TRAIN, data, "--model_dir=run"]) == 0
    finally:
        os.chdir(cwd)
    assert (ws / "run" / "final_params.safetensors").is_file()
    # the same run as if killed after its last checkpoint: checkpoints, no final files
    shutil.copytree(ws / "run", ws / "half", ignore=shutil.ignore_patterns(
        "summary.json", "final_params.safetensors", "table.*"))
    assert sorted(p.name for p in (ws / "half" / "checkpoints").iterdir()) == ["2", "4"]
    return ws


# --------------------------------------------------------------------------- case set-ups
def copy_of(src: str, dst: str, edit: Optional[Callable[[Path], None]] = None):
    def setup(ws: Path) -> None:
        shutil.copytree(ws / src, ws / dst)
        if edit:
            edit(ws / dst)
    return setup


def append(name: str, data: bytes) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        with open(d / name, "ab") as f:
            f.write(data)
    return edit


def lines_of(ws: Path, path: str) -> int:
    return len((ws / path).read_bytes().splitlines())


def blank_first_query(d: Path) -> None:
    path = d / "nq-dev-kilt.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    rec = json.loads(lines[0])
    rec["input"] = "  "
    path.write_text(json.dumps(rec) + "\n" + "".join(lines[1:]))


def damage_checkpoints(d: Path) -> None:
    for p in (d / "checkpoints").rglob("*"):
        if p.is_file() and p.parent.name == "d":
            p.write_bytes(b"damaged")


def write(path: str, text: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_text(text)
    return setup


def without_config(d: Path) -> None:
    (d / "config.gin").unlink()


DATA = "--gin_param=DATA_DIR='{ws}/mk'"

# (id, tool, args, [texts the error line must contain], set-up). "{ws}" is the workspace.
CASES = [
    # train
    ("train-no-model-dir", "train", ["--gin_file=taco_tiny.gin"], ["--model_dir"], None),
    ("train-positional", "train", ["--model_dir=x", "extra"], ["unexpected arguments"], None),
    ("train-unknown-gin-file", "train", ["--gin_file=nope.gin", "--model_dir=x"],
     ["nope.gin"], None),
    ("train-unknown-binding", "train", [*TRAIN, "--model_dir=x", "--gin_param=train.stepz=3"],
     ["stepz"], None),
    ("train-negative-steps", "train", [*TRAIN, DATA, "--model_dir=x",
                                       "--gin_param=TRAIN_STEPS=-1"],
     ["train.steps", "-1"], None),
    ("train-infinite-learning-rate", "train", [*TRAIN, DATA, "--model_dir=x",
                                               "--gin_param=LEARNING_RATE=1e999"],
     ["train.learning_rate", "inf"], None),
    ("train-gin-syntax-error", "train", [*TRAIN, DATA, "--model_dir=x",
                                         "--gin_param=LEARNING_RATE=float('nan')"],
     ["LEARNING_RATE=float('nan')", "Failed to parse token 'float'"], None),
    ("train-bad-marker", "train", [*TRAIN, DATA, "--model_dir=x", "--gin_param=MARKER='pre'"],
     ["train.marker", "'pre'"], None),
    ("train-unknown-task", "train", [*TRAIN, DATA, "--model_dir=x",
                                     "--gin_param=TASKS=['nope']"], ["nope", "fever"], None),
    ("train-missing-data-dir", "train", [*TRAIN, "--model_dir=x",
                                         "--gin_param=DATA_DIR='no/such/dir'"],
     ["no/such/dir"], None),
    ("train-config-changed", "train", [*TRAIN, DATA, "--model_dir=run1",
                                       "--gin_param=MARKER='none'"],
     ["train.marker: 'prefix' -> 'none'", "--allow_config_change"], copy_of("run", "run1")),
    ("train-architecture-changed", "train",
     [*TRAIN, DATA, "--model_dir=run2", "--gin_param=TINY_OVERRIDES={'vocab_size': 4096}"],
     ["build_biencoder.config_overrides", "config.gin"], copy_of("run", "run2")),
    ("train-damaged-summary", "train", [*TRAIN, DATA, "--model_dir=run3"],
     ["run3/summary.json:1", "not valid JSON"],
     copy_of("run", "run3", lambda d: (d / "summary.json").write_text('{"steps": 4,'))),
    ("train-damaged-checkpoints", "train", [*TRAIN, DATA, "--model_dir=half1"],
     ["no intact checkpoint", "step 4 is unreadable", "half1/checkpoints/4",
      "step 2 is unreadable"], copy_of("half", "half1", damage_checkpoints)),
    ("train-bad-flag-value", "train", ["--model_dir=x", "--allow_config_change=maybe"],
     ["--allow_config_change"], None),
    # evaluate
    ("evaluate-missing-data-dir", "evaluate", ["--data_dir=nowhere", "--out_dir=o"],
     ["nowhere"], None),
    ("evaluate-unknown-task", "evaluate", ["--data_dir=mk", "--out_dir=o", "--tasks=nope"],
     ["nope", "fever"], None),
    ("evaluate-bad-json-line", "evaluate", ["--data_dir=mk1", "--out_dir=o", "--tasks=nq"],
     ["mk1/nq-dev-kilt.jsonl:{n}", "invalid JSON"],
     copy_of("mk", "mk1", append("nq-dev-kilt.jsonl", b'{"id": "x", "input": [}\n'))),
    ("evaluate-not-utf8", "evaluate", ["--data_dir=mk2", "--out_dir=o", "--tasks=nq"],
     ["mk2/nq-dev-kilt.jsonl:{n}", "UTF-8"],
     copy_of("mk", "mk2", append("nq-dev-kilt.jsonl", b'{"id": "\xff\xfe"}\n'))),
    ("evaluate-not-an-object", "evaluate", ["--data_dir=mk3", "--out_dir=o", "--tasks=nq"],
     ["mk3/nq-dev-kilt.jsonl:{n}", "JSON object"],
     copy_of("mk", "mk3", append("nq-dev-kilt.jsonl", b"[1, 2]\n"))),
    ("evaluate-duplicate-id", "evaluate", ["--data_dir=mk4", "--out_dir=o", "--tasks=nq"],
     ["mk4/nq-dev-kilt.jsonl:{n}", "duplicate id"],
     copy_of("mk", "mk4", lambda d: append("nq-dev-kilt.jsonl", (d / "nq-dev-kilt.jsonl")
                                            .read_bytes().splitlines(keepends=True)[0])(d))),
    ("evaluate-bad-page", "evaluate", ["--data_dir=mk5", "--out_dir=o", "--tasks=nq"],
     ["mk5/knowledge_source.jsonl:{n}", "text"],
     copy_of("mk", "mk5", append("knowledge_source.jsonl", b'{"wikipedia_id": "z", "text": 3}\n'))),
    ("evaluate-depth-zero", "evaluate", ["--data_dir=mk", "--out_dir=o",
                                         "--gin_param=run_evaluation.depth=0"], ["depth"], None),
    ("evaluate-bad-ks", "evaluate", ["--data_dir=mk", "--out_dir=o",
                                     "--gin_param=run_evaluation.ks=[0, 5]"], ["ks"], None),
    ("evaluate-blank-query-fail", "evaluate", ["--data_dir=mk6", "--out_dir=o6", "--tasks=nq",
                                               "--on_empty_query=fail"],
     ["mk6/nq-dev-kilt.jsonl", "1 of", "empty or blank"], copy_of("mk", "mk6", blank_first_query)),
    ("evaluate-bad-policy", "evaluate", ["--on_empty_query=ignore"], ["--on_empty_query"], None),
    ("evaluate-unknown-bm25-param", "evaluate", ["--data_dir=mk", "--out_dir=o",
                                                 "--gin_param=BM25Retriever.k9=1.0"], ["k9"], None),
    ("evaluate-users-files-in-minikilt-dir", "evaluate", ["--out_dir=mine"],
     ["mine/minikilt", "knowledge_source.jsonl", "--overwrite"],
     write("mine/minikilt/knowledge_source.jsonl", '{"wikipedia_id": "1", "text": ["a"]}\n')),
    # retrieve
    ("retrieve-missing-run", "retrieve", ["--model_dir=nope", "--out_dir=o"], ["nope"], None),
    ("retrieve-missing-out-dir-flag", "retrieve", ["--model_dir=run"], ["--out_dir"], None),
    ("retrieve-k-zero", "retrieve", ["--model_dir=run", "--out_dir=o", "--k=0"], ["--k"], None),
    ("retrieve-ks-not-int", "retrieve", ["--model_dir=run", "--out_dir=o", "--ks=1,five"],
     ["--ks", "'five'"], None),
    ("retrieve-bad-index-spec", "retrieve", ["--model_dir=run", "--out_dir=o",
                                             "--index_spec=Bogus"], ["Bogus"], None),
    ("retrieve-ivf-too-big", "retrieve", ["--model_dir=run", "--out_dir=o",
                                          "--index_spec=IVF4096,Flat"],
     ["IVF4096,Flat", "4096 IVF lists", "passages"], None),
    ("retrieve-nprobe-zero", "retrieve", ["--model_dir=run", "--out_dir=o", "--nprobe=0"],
     ["--nprobe"], None),
    ("retrieve-bad-dtype", "retrieve", ["--model_dir=run", "--out_dir=o", "--dtype=int8"],
     ["--dtype"], None),
    ("retrieve-no-config", "retrieve", ["--model_dir=run4", "--out_dir=o"],
     ["run4/config.gin"], copy_of("run", "run4", without_config)),
    ("retrieve-unknown-task", "retrieve", ["--model_dir=run", "--out_dir=o", "--data_dir=mk",
                                           "--tasks=nope"], ["nope"], None),
    ("retrieve-missing-params", "retrieve", ["--model_dir=run", "--out_dir=o",
                                             "--params=none.safetensors"],
     ["none.safetensors"], None),
    ("retrieve-blank-query-fail", "retrieve", ["--model_dir=run", "--out_dir=o", "--data_dir=mk7",
                                               "--tasks=nq", "--on_empty_query=fail"],
     ["mk7/nq-dev-kilt.jsonl", "empty or blank"], copy_of("mk", "mk7", blank_first_query)),
    # index.encode
    ("encode-num-shards-zero", "index.encode", ["--model_dir=run", "--out_dir=e",
                                                "--num_shards=0"], ["--num_shards"], None),
    ("encode-shard-id-too-big", "index.encode", ["--model_dir=run", "--out_dir=e",
                                                 "--shard_id=2", "--num_shards=2"],
     ["--shard_id=2", "--num_shards=2"], None),
    ("encode-bad-chunk-mode", "index.encode", ["--model_dir=run", "--out_dir=e",
                                               "--chunk_mode=sentence"], ["--chunk_mode"], None),
    ("encode-batch-zero", "index.encode", ["--model_dir=run", "--out_dir=e", "--batch_size=0"],
     ["--batch_size"], None),
    ("encode-missing-run", "index.encode", ["--model_dir=nope", "--out_dir=e"], ["nope"], None),
    # compare
    ("compare-no-runs", "compare", [], ["at least one run"], None),
    ("compare-truncated-results", "compare", ["--runs=a=cmp"], ["cmp/results.json:1",
                                                                "not valid JSON"],
     write("cmp/results.json", '{"retriever": "bm25", "tasks": {"nq": {')),
    ("compare-missing-run", "compare", ["--runs=a=nowhere"], ["nowhere"], None),
    ("compare-unknown-metric", "compare", ["--runs=a=run", "--metrics=bogus"],
     ["unknown metric", "bogus"], None),
    ("compare-bad-selector", "compare", ["--runs=a=run#final"], ["#final"], None),
    # plots
    ("plots-missing-run", "plots", ["--model_dir=nope"], ["nope"], None),
    ("plots-bad-step", "plots", ["--model_dir=run", "--step=abc"], ["--step"], None),
    ("plots-missing-step", "plots", ["--model_dir=run", "--step=7"], ["step 7"], None),
    ("plots-bins-zero", "plots", ["--model_dir=run", "--bins=0"], ["--bins"], None),
    # zero_few_shot
    ("zero-few-shot-no-out-dir", "zero_few_shot", [], ["--out_dir"], None),
    ("zero-few-shot-scale-zero", "zero_few_shot", ["--out_dir=z", "--minikilt_scale=0"],
     ["--minikilt_scale"], None),
    ("zero-few-shot-too-few", "zero_few_shot", ["--out_dir=z", "--too_few=maybe"],
     ["--too_few"], None),
    ("zero-few-shot-unknown-task", "zero_few_shot", ["--out_dir=z", "--data_dir=mk",
                                                     "--held_out=nope", "--dry_run"],
     ["nope"], None),
    # minikilt
    ("minikilt-users-files", "minikilt", ["--out_dir=own", "--scale=0.05"],
     ["own", "knowledge_source.jsonl", "--overwrite"],
     write("own/knowledge_source.jsonl", '{"wikipedia_id": "1", "text": ["a"]}\n')),
    ("minikilt-negative-scale", "minikilt", ["--scale=-1"], ["--scale", "'-1'"], None),
    ("minikilt-bad-seed", "minikilt", ["--seed=abc"], ["--seed", "'abc'"], None),
]


def test_there_are_enough_cases_and_every_tool_has_some():
    assert len(CASES) >= 40
    assert {c[1] for c in CASES} == set(MODULES) | {"minikilt"}
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, workspace, monkeypatch, capsys):
    name, tool, args, expected, setup = case
    if setup is not None:
        marker = workspace / ".setup" / name
        if not marker.exists():
            setup(workspace)
            marker.parent.mkdir(exist_ok=True)
            marker.touch()
    monkeypatch.chdir(workspace)
    args = [a.replace("{ws}", str(workspace)) for a in args]
    before = digest(workspace)
    capsys.readouterr()
    code = run_cli(tool, args)
    err = capsys.readouterr().err
    assert code == 2, f"exit status {code}; stderr:\n{err[-3000:]}"
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{tool}: error: ")]
    assert len(lines) == 1, err[-3000:]
    line = lines[0]
    assert "Traceback" not in err, err[-3000:]
    for text in expected:
        if "{n}" in text:  # the last line of the file named
            path = text.split(":")[0]
            text = text.replace("{n}", str(lines_of(workspace, path)))
        assert text in line, f"{text!r} not in {line!r}"
    after = digest(workspace)
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"files changed or removed: {changed}"


def test_verbosity_1_adds_the_traceback(workspace, monkeypatch, capsys):
    """The one-line error by default; ``--verbosity=1`` prints the traceback before it."""
    monkeypatch.chdir(workspace)
    assert run_cli("evaluate", ["--data_dir=nowhere", "--out_dir=o"]) == 2
    quiet = capsys.readouterr().err
    assert "Traceback" not in quiet and "--verbosity=1 shows the traceback" in quiet
    assert run_cli("evaluate", ["--data_dir=nowhere", "--out_dir=o", "--verbosity=1"]) == 2
    loud = capsys.readouterr().err
    assert "Traceback (most recent call last)" in loud
    assert loud.rstrip().splitlines()[-1].startswith("evaluate: error: no KILT task files")
