"""Task registry: the 8 KILT tasks, prefixes, markers, lengths; user-registered tasks."""

import gin
import pytest

from multiret_jax.data import tasks


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
