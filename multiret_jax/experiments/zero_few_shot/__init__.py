"""Zero- and few-shot transfer to held-out tasks (MT-DPR Table 5): leave-one-out training,
few-shot fine-tuning, a BM25 row and the table, every stage a resumable subprocess. The
command line and what it does: ``python -m multiret_jax.experiments.zero_few_shot``
(``__main__.py``).

Code, each module importing only the ones before it: ``plan`` the options (``Options``),
the stages and the checks made before any runs (``plan``); ``stages`` running them
(resume/skip, per-stage records and logs) and the start-point check (``init_check``);
``driver`` the orchestration (``run_zero_few_shot``) and the table (``build_table``);
``__main__`` the command line.
"""
