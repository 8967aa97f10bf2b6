"""Who this process is in a tensor-parallel group, and the two collectives a sharded model needs.

A ``TPGroup`` is created before the model is built (its layers keep it and shard themselves by
``rank``/``size``) and gets its process groups once every rank has loaded: the *device group*
(NCCL on CUDA, gloo on CPU) carries the model's all-reduce / all-gather; the *control group*
(gloo, no practical timeout, since workers wait there while the engine is idle) carries rank 0's
batches and control messages. With ``size == 1`` no collective is ever called."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..errors import InvalidRequestError

# A collective of the model waits at most this long for a slow rank (a dead one is found sooner, by
# the coordinator's watchdog); the control group must outlast any idle period of the engine.
DEVICE_TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("SGL_JUPYTER_TP_TIMEOUT_S", "300")))
CONTROL_TIMEOUT = datetime.timedelta(days=365)


@dataclass
class TPGroup:
    rank: int = 0
    size: int = 1
    device_group: Any = None
    control_group: Any = None

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        if self.size > 1:
            dist.all_reduce(x, group=self.device_group)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x`` along the last dimension (rank order)."""
        if self.size == 1:
            return x
        x = x.contiguous()
        out = torch.empty((self.size * x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        _all_gather_single(out, x, group=self.device_group)  # one call (NCCL: capturable in a CUDA graph)
        return out.view(self.size, *x.shape).movedim(0, -2).reshape(*x.shape[:-1], self.size * x.shape[-1])


# torch 2.13 renamed all_gather_into_tensor (the concatenated output form works on NCCL and gloo alike)
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_tp_size(hf_config, tp_size: int) -> None:
    """A clear error when ``tp_size`` cannot shard this model: it must divide the attention heads and
    the MLP width, and divide or be a multiple of the KV heads (fewer KV heads than ranks: replicated)."""
    if tp_size == 1:
        return
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    inter = hf_config.intermediate_size
    if heads % tp_size:
        raise InvalidRequestError(
            f"tp_size={tp_size} does not divide the model's {heads} attention heads; use a tp_size that divides "
            f"{heads}: {', '.join(map(str, divisors(heads)))}")
    if kv_heads % tp_size and tp_size % kv_heads:
        raise InvalidRequestError(
            f"tp_size={tp_size} neither divides nor is a multiple of the model's {kv_heads} KV heads; use one of "
            f"{', '.join(str(d) for d in divisors(heads) if kv_heads % d == 0 or d % kv_heads == 0)}")
    if inter % tp_size:
        raise InvalidRequestError(f"tp_size={tp_size} does not divide the model's MLP width {inter}")


def local_attention_heads(hf_config, tp_size: int) -> tuple[int, int, int]:
    """(query heads, KV heads, head_dim) held by one rank."""
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    return heads // tp_size, max(1, kv_heads // tp_size), head_dim


def init_process_groups(tp: TPGroup, store: "dist.Store", device: torch.device) -> None:
    """Join the group (every rank calls this with the same store); fills ``tp``'s groups."""
    if device.type == "cuda":
        dist.init_process_group("nccl", store=store, rank=tp.rank, world_size=tp.size, timeout=DEVICE_TIMEOUT,
                                device_id=device)
    else:
        dist.init_process_group("gloo", store=store, rank=tp.rank, world_size=tp.size, timeout=DEVICE_TIMEOUT)
    tp.device_group = dist.group.WORLD
    tp.control_group = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


def destroy_process_groups(tp: TPGroup) -> None:
    tp.device_group = tp.control_group = None
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a group broken by a dead rank may refuse a clean teardown
            pass


def abort_device_group(tp: TPGroup) -> None:
    """Make a collective blocked on a dead rank return (NCCL waits until its timeout otherwise)."""
    group: Optional[Any] = tp.device_group
    if group is None:
        return
    try:
        group.abort()
    except Exception:  # noqa: BLE001 - best effort
        pass
