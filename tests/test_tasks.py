"""Task registry: the 8 KILT tasks, prefixes, markers, lengths; user-registered tasks."""

import dataclasses

import gin
import pytest

from multiret_jax.data import tasks
from multiret_jax.data.tasks import get_task, mention_window


def test_kilt_tasks_prefixes_types_lengths():
    expected = {  # TACO Table 5 / MT-DPR task types
        "nq": ("NQ", "QA", 32), "triviaqa": ("TQA", "QA", 32), "hotpotqa": ("HOPO", "QA", 32),
        "wow": ("WOW", "DIAL", 256), "trex": ("TREX", "SF", 32), "fever": ("FEVER", "FC", 64),
        "structured_zeroshot": ("ZSRE", "SF", 32), "aidayago2": ("AIDA", "EL", 128)}
    got = {t.name: (t.prefix, t.task_type, t.max_query_len) for t in tasks.KILT_TASKS}
    assert got == expected
    assert {t.task_type for t in tasks.KILT_TASKS} == set(tasks.TASK_TYPES)


def test_filenames_follow_kilt():
    assert tasks.get_task("nq").filename("dev") == "nq-dev-kilt.jsonl"
    assert tasks.get_task("triviaqa").filename("train") == "triviaqa-train_id-kilt.jsonl"
    assert tasks.get_task("structured_zeroshot").filename("dev") == "structured_zeroshot-dev-kilt.jsonl"


def test_format_query_markers():
    t = tasks.get_task("fever")
    assert t.format_query("A claim.") == "FEVER [SEP] A claim."
    assert t.format_query("A claim.", marker="type") == "FC [SEP] A claim."
    assert t.format_query("A claim.", marker="none") == "A claim."
    with pytest.raises(ValueError, match="unknown query marker"):
        t.format_query("x", marker="bogus")


def test_unknown_task_error_lists_known():
    with pytest.raises(KeyError, match="registered tasks:.*nq"):
        tasks.get_task("msmarco_unknown")


def test_register_from_python_and_gin():
    t = tasks.register_task(tasks.Task("my_qa", "MYQA", "QA", 48))
    assert tasks.get_task("my_qa") is t
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_task(tasks.Task("my_qa", "OTHER", "QA", 48))
    gin.clear_config()
    gin.parse_config("""
        register_task_from_gin.name = "gin_task"
        register_task_from_gin.prefix = "GT"
        register_task_from_gin.task_type = "FC"
        register_task_from_gin.max_query_len = 100
    """)
    tasks.register_task_from_gin()
    gin.clear_config()
    assert tasks.get_task("gin_task").format_query("q") == "GT [SEP] q"
    with pytest.raises(ValueError, match="unknown task_type"):
        tasks.Task("bad", "B", "NOT_A_TYPE")


# --------------------------------------------------------------- AIDA: the mention window

def test_mention_window_keeps_the_mention_centred():
    words = [f"w{i}" for i in range(300)]
    words[200:203] = ["[START_ENT]", "Leicester", "[END_ENT]"]
    text = " ".join(words)
    got = mention_window(text, 128).split()
    assert len(got) == 128 and "[START_ENT] Leicester [END_ENT]" in " ".join(got)
    before = got.index("[START_ENT]")
    assert before == (128 - 3) // 2  # half the context before the mention
    assert mention_window("short [START_ENT] x [END_ENT] text", 128) == \
        "short [START_ENT] x [END_ENT] text"
    no_mention = " ".join(words[:150])
    assert mention_window(no_mention, 128) == no_mention  # the start, as other tasks
    plain = [f"w{i}" for i in range(297)]
    end = " ".join(plain + ["[START_ENT]", "Y", "[END_ENT]"])  # no right context
    assert mention_window(end, 10).split() == plain[290:] + ["[START_ENT]", "Y", "[END_ENT]"]


def test_aida_queries_keep_their_mention_on_the_real_sample(shared_data, minilm_dir):
    """KILT's AIDA records are whole articles, one record per mention, the mention marked
    with [START_ENT] ... [END_ENT]. The sample's records mark early mentions; the same
    articles with a later mention marked (as KILT has a record for each) lose it when the
    start is kept to 128 tokens, and keep it with the mention window."""
    from multiret_jax.data.kilt import read_task_file
    from multiret_jax.data.tokenization import Tokenization
    aida = get_task("aidayago2")
    assert aida.window == "mention" and aida.max_query_len == 128
    records = [r for split in ("train", "dev") for r in read_task_file(
        shared_data / "kilt_samples" / f"aidayago2-{split}-kilt.jsonl")]
    inputs = [r.input for r in records]
    for r in records:  # a later mention of the same article: a capitalised word late in it
        words = r.input.replace("[START_ENT] ", "").replace(" [END_ENT]", "").split()
        late = [i for i in range(len(words) * 2 // 3, len(words))
                if words[i][:1].isupper() and words[i].isalpha()]
        if len(words) > 300 and late:
            i = late[0]
            inputs.append(" ".join(words[:i] + ["[START_ENT]", words[i], "[END_ENT]"]
                                   + words[i + 1:]))
    assert len(inputs) - len(records) >= 5
    tok = Tokenization.from_dir(str(minilm_dir))
    start_only = dataclasses.replace(aida, window="start")

    def kept(task):
        ids, _ = tok.encode_queries(task, inputs, marker="prefix")
        return [("start _ ent" in t or "start_ent" in t) and ("end _ ent" in t or "end_ent" in t)
                for t in (tok.decode(row) for row in ids)]

    windowed, truncated = kept(aida), kept(start_only)
    assert all(windowed), (sum(windowed), len(inputs))
    assert all(truncated[:len(records)])  # the sample's own (early) mentions: both keep them
    assert not any(truncated[len(records):])  # later mentions: the start alone loses them


def test_query_formats():
    """The marker formats: this project's "[SEP]", TACO's public code's T5 sentinel
    (``' '.join([task_name, '<extra_id_1>'])`` before the query), and the name alone."""
    from multiret_jax.data.tasks import QueryFormat, query_format
    nq = tasks.get_task("nq")
    assert QueryFormat("prefix", "sep").text(nq, "who?") == "NQ [SEP] who?"
    assert QueryFormat("prefix", "sentinel").text(nq, "who?") == "NQ <extra_id_1> who?"
    assert QueryFormat("prefix", "plain").text(nq, "who?") == "NQ who?"
    assert QueryFormat("type", "sentinel").text(nq, "who?") == "QA <extra_id_1> who?"
    assert QueryFormat("none", "sentinel").text(nq, "who?") == "who?"
    assert QueryFormat("prefix", "sentinel").marker_text(nq) == "NQ <extra_id_1>"
    assert QueryFormat("none").marker_text(nq) == ""
    assert query_format("type") == QueryFormat("type", "sep", True)
    fev = tasks.get_task("fever")
    assert QueryFormat("prefix", marker_in_len=True).length(fev, 4) == 64
    assert QueryFormat("prefix", marker_in_len=False).length(fev, 4) == 68
    assert QueryFormat("prefix", marker_in_len=False).length(fev, 4, cap=32) == 32
    with pytest.raises(ValueError, match="unknown marker format 'colon'"):
        QueryFormat("prefix", "colon")
    with pytest.raises(ValueError, match="unknown query marker"):
        QueryFormat("bogus")
