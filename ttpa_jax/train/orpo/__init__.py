"""``train orpo``: ORPO on preference records, no reference model (``config``: its settings, JAX-free;
``unit``: its loss and metrics on the preference batches DPO uses)."""
