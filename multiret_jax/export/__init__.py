"""Export a trained run as HF ``transformers`` / ``sentence-transformers`` directories.

    python -m multiret_jax.export --model_dir=RUN --out_dir=DIR [--format=hf|sentence-transformers]

``plan.py`` reads and checks the whole run (``config.gin``, ``final_params.safetensors``,
``summary.json``, the tokenizer, the output directory) before anything is written;
``write.py`` writes every tower into a staging directory and swaps it in; ``card.py``
writes the README (query format per task, embedding recipe, validation figures).

Layout of ``DIR``: a shared tower (TACO) is ``DIR`` itself; separate towers (DPR, MT-DPR)
are ``DIR/query`` and ``DIR/passage``; task-specific query towers are
``DIR/query/<tower>`` (a task name, or a task type with ``tower_by="type"``). Every
tower directory holds ``config.json`` + ``model.safetensors`` and the run's tokenizer
(``tokenizer.json``, ``tokenizer_config.json``); with ``--format=sentence-transformers``
also ``modules.json``, the pooling module and ``config_sentence_transformers.json``
whose prompts are the query prefixes of the tasks the tower serves. ``DIR/README.md``
says how queries are written; ``DIR/multiret_export.json`` records the same facts for
programs (and which run was exported, so a rerun may replace it).
"""
