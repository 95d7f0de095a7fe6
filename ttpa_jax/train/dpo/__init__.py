"""``train dpo``: DPO on preference records (``config``: its settings, JAX-free; ``unit``: its batches,
loss and metrics; ``reference``: the reference pass run once before training)."""
