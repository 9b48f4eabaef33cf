"""Tools that read finished runs: side-by-side comparison (``compare``), TACO analysis
plots (``plots``) and the zero-/few-shot experiment driver (``zero_few_shot``)."""
