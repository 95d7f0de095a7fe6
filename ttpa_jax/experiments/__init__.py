"""End-to-end experiments on top of every stage: the pipeline, ``make demo`` and the ablation."""
