"""``train sft``: supervised fine-tuning on {messages, tools} records (``config``: its settings, JAX-free;
``unit``: its batches, loss and metrics)."""
