"""Tool calls and their scoring: the tool library, call parsing and rendering, schema checks, gold values, ESM, return values, rewards. Pure Python, no JAX."""
