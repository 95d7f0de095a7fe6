"""The JAX model layer: configuration and presets, the NNX transformer, LoRA, Hugging Face and GGUF I/O, sharding, multi-host start-up."""
