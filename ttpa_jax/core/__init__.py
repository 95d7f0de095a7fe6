"""The base layer: errors a user can cause, JSONL with file:line errors, record normalisation, the CLI wrapper. Pure Python, no JAX."""
