"""Decoding: next-token rules, the jitted prefill + while-loop over a KV cache, batched generation, Token-level Preference Sampling."""
