"""Stage 2: the generator adapter, prompts, prefix-cached decoding and the end-to-end rows."""
