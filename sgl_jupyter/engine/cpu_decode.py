"""One C call per CPU decode step for a Llama-family model whose linear layers hold packed GGUF blocks.

Eager torch pays a dispatch per op: over 30 layers that is most of a small model's decode step on a CPU. With
``quantization="gguf"`` every decode batch runs instead through ``gguf_decode`` (kernels/gguf_cpu.c): RMSNorm,
qkv, RoPE, the KV write, attention over the request's paged slots, o_proj, the MLP and the residuals of all
layers, then the LM head (packed too), on the engine's own KV pool and request-to-token table. Prefill
(extend) batches keep the torch path, whose linear layers call the same packed kernel."""
from __future__ import annotations

import ctypes
import logging
import math
from typing import Optional

import torch

from sgl_jupyter.kernels import gguf_cpu as kernel

from .forward_batch import ForwardBatch

logger = logging.getLogger(__name__)


class CpuDecoder:
    """Holds the C view of the model (pointers into the packed weights and the KV buffers; it keeps every
    tensor it points to alive) and runs decode batches through it."""

    def __init__(self, model: torch.nn.Module, kv_pool, req_to_token: torch.Tensor, head, threads: int):
        cfg = model.config
        self.model, self.kv_pool, self.req_to_token, self.head = model, kv_pool, req_to_token, head
        self.threads = threads
        self.vocab = cfg.vocab_size
        attn0 = model.layers[0].self_attn
        self._keep = []
        layers = (kernel.Layer * len(model.layers))()
        for i, layer in enumerate(model.layers):
            a, m = layer.self_attn, layer.mlp
            parts = [a.qkv_proj.packed, a.o_proj.packed, m.gate_up_proj.packed, m.down_proj.packed]
            norms = [layer.input_layernorm.weight.detach().float().contiguous(),
                     layer.post_attention_layernorm.weight.detach().float().contiguous()]
            self._keep += norms
            layers[i] = kernel.Layer(*[p.type_id for p in parts], *[p.data.data_ptr() for p in parts],
                                     *[n.data_ptr() for n in norms], kv_pool.k_buffers[i].data_ptr(),
                                     kv_pool.v_buffers[i].data_ptr())
        final = model.norm.weight.detach().float().contiguous()
        self._keep += [layers, final]
        self.cmodel = kernel.Model(len(model.layers), cfg.hidden_size, attn0.num_heads, attn0.num_kv_heads,
                                   attn0.head_dim, cfg.intermediate_size, float(cfg.rms_norm_eps),
                                   float(attn0.attn.scale),
                                   layers, final.data_ptr())
        self.cos = model.rotary.cos_cache.float().contiguous()
        self.sin = model.rotary.sin_cache.float().contiguous()
        self.steps = 0

    @torch.inference_mode()
    def forward(self, fb: ForwardBatch) -> torch.Tensor:
        """Logits [B, vocab] float32 of one decode batch (every row is asked for in decode)."""
        self.steps += 1
        ids = fb.input_ids
        x = self.model.embed_tokens.weight.index_select(0, ids).float().contiguous()
        M, H = x.shape
        out = torch.empty(M, H, dtype=torch.float32)
        pos, loc = fb.positions.contiguous(), fb.out_cache_loc.contiguous()
        rows, seq = fb.req_pool_indices.contiguous(), fb.seq_lens.contiguous()
        table = self.req_to_token
        kernel.lib().gguf_decode(ctypes.byref(self.cmodel), x.data_ptr(), M, pos.data_ptr(), loc.data_ptr(),
                                 table.data_ptr(), table.stride(0), rows.data_ptr(), seq.data_ptr(),
                                 self.cos.data_ptr(), self.sin.data_ptr(), out.data_ptr(), self.threads)
        h = self.head
        return kernel.linear(h.type_id, h.data, h.rows, h.cols, out, self.threads)[:, :self.vocab]


def build_cpu_decoder(loaded, kv_pool, req_to_token_pool) -> Optional[CpuDecoder]:
    """A ``CpuDecoder`` when the model runs packed GGUF weights on the CPU with a plain Llama layout (no qkv
    bias, no q/k norm, one rank, fp32 KV cache); None otherwise (the eager torch path serves it)."""
    from .quantization.gguf_cpu import GGUFCpuMethod

    model = loaded.model
    if loaded.device.type != "cpu" or not hasattr(model, "layers") or not hasattr(model, "rotary"):
        return None
    layer0 = model.layers[0]
    method = getattr(getattr(layer0.self_attn, "qkv_proj", None), "quant_method", None)
    if not isinstance(method, GGUFCpuMethod) or method.lm_head() is None:
        return None
    table = req_to_token_pool.table
    why = None
    if getattr(model, "qkv_bias", False) or getattr(model, "qk_norm", False) or model.tp.size != 1:
        why = "qkv bias, q/k norm or tensor parallelism"
    elif kv_pool.dtype != torch.float32 or table.dtype != torch.int32 or table.device.type != "cpu":
        why = f"KV cache {kv_pool.dtype} / table {table.dtype}"
    elif any(getattr(l.self_attn.qkv_proj, "bias", None) is not None for l in model.layers):
        why = "attention bias"
    elif model.config.hidden_act not in ("silu",) or (model.config.hidden_size | model.config.intermediate_size
                                                      | model.layers[0].self_attn.head_dim) % 32:
        why = "activation, or a size not a multiple of 32"
    elif getattr(model.config, "head_dim", None) not in (None, model.config.hidden_size // model.config.num_attention_heads):
        why = "head_dim"
    if why:
        logger.info("gguf: fused CPU decode step off (%s); decoding through torch with packed linears", why)
        return None
    return CpuDecoder(model, kv_pool, table, method.lm_head(), method.threads or torch.get_num_threads())
