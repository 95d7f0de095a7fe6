"""The JAX model layer: configuration and presets, the NNX transformer, LoRA, Hugging Face and GGUF I/O, sharding, multi-host start-up.

Importing it applies the CPU-only allocator settings where JAX will compute on the CPU
(``ttpa_jax.cpu.tune``): every stage that computes with JAX imports this layer before JAX starts its threads.
"""

from ttpa_jax import cpu

cpu.tune()
