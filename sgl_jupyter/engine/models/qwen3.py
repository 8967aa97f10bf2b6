"""Qwen3: the Llama network with RMSNorm on each head's q and k (no qkv bias)."""
from .llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True
