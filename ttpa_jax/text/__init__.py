"""Chat rendering with the model's own template, prompt encoding, detokenization: text <-> token ids. No JAX."""
