"""Rank 0 -> workers: each ForwardBatch (and the stop message) over the gloo control group.

A step costs two broadcasts of int64 host tensors: a fixed header, then one packed payload:
the batch's index tensors and the request-table cells that changed since the last step. The
table is not sent whole: the workers keep their own copy, and rank 0's ``TrackedReqToTokenPool``
remembers which cells ``write()`` touched (admission, chunked prefill, prefix-cache rewrites);
the one write the scheduler makes directly (each decode token's slot) is ``out_cache_loc`` at
``positions``, which every worker applies from the batch itself."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from ..forward_batch import ForwardBatch, ForwardMode
from ..kv_pool import ReqToTokenPool
from .parallel_state import TPGroup

OP_FORWARD, OP_STOP = 1, 2
_MODES = [ForwardMode.EXTEND, ForwardMode.DECODE]
_HEADER = 8  # op, mode, tokens, batch size, logits rows, table rows updated, table cells updated, spare


class TrackedReqToTokenPool(ReqToTokenPool):
    """The request table of rank 0: also records, per row, the span of cells written since the last step."""

    def __init__(self, max_reqs: int, max_context: int, device: torch.device):
        super().__init__(max_reqs, max_context, device)
        self.dirty: dict[int, tuple[int, int]] = {}

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        super().write(row, start, slots)
        end = start + slots.numel()
        if end > start:
            lo, hi = self.dirty.get(row, (start, end))
            self.dirty[row] = (min(lo, start), max(hi, end))

    def take_updates(self) -> tuple[list[int], list[int], list[int], torch.Tensor]:
        """(rows, starts, lengths, current values) of the written spans, and forget them."""
        if not self.dirty:
            return [], [], [], torch.empty(0, dtype=torch.int64)
        rows = list(self.dirty)
        starts = [self.dirty[r][0] for r in rows]
        lens = [self.dirty[r][1] - self.dirty[r][0] for r in rows]
        self.dirty = {}
        values = torch.cat([self.read(r, s + n, start=s) for r, s, n in zip(rows, starts, lens)])
        return rows, starts, lens, values


def send_batch(tp: TPGroup, fb: ForwardBatch, table: TrackedReqToTokenPool) -> None:
    rows, starts, lens, values = table.take_updates()
    index = torch.cat([fb.input_ids, fb.positions, fb.out_cache_loc, fb.req_pool_indices, fb.prefix_lens,
                       fb.extend_lens, fb.logits_indices]).cpu()
    payload = torch.cat([index, torch.tensor(rows + starts + lens, dtype=torch.int64), values])
    header = torch.tensor([OP_FORWARD, _MODES.index(fb.mode), fb.num_tokens, fb.batch_size,
                           fb.logits_indices.numel(), len(rows), values.numel(), 0], dtype=torch.int64)
    dist.broadcast(header, 0, group=tp.control_group)
    dist.broadcast(payload, 0, group=tp.control_group)


def send_stop(tp: TPGroup) -> None:
    header = torch.zeros(_HEADER, dtype=torch.int64)
    header[0] = OP_STOP
    dist.broadcast(header, 0, group=tp.control_group)


def recv_batch(tp: TPGroup, table: ReqToTokenPool, device: torch.device) -> Optional[ForwardBatch]:
    """The next batch from rank 0 with this rank's table brought up to date; None: stop."""
    header = torch.empty(_HEADER, dtype=torch.int64)
    dist.broadcast(header, 0, group=tp.control_group)
    op, mode, T, B, R, U, S, _ = header.tolist()
    if op == OP_STOP:
        return None
    if op != OP_FORWARD:
        raise RuntimeError(f"unknown tensor-parallel control message {op}")
    payload = torch.empty(3 * T + 3 * B + R + 3 * U + S, dtype=torch.int64)
    dist.broadcast(payload, 0, group=tp.control_group)
    ids, pos, loc, req_rows, prefix, extend, logits, up_rows, up_starts, up_lens, values = \
        payload.split([T, T, T, B, B, B, R, U, U, U, S])
    if U:
        cell_rows = up_rows.repeat_interleave(up_lens)
        seg_start = torch.cumsum(up_lens, 0) - up_lens
        cols = up_starts.repeat_interleave(up_lens) + torch.arange(S) - seg_start.repeat_interleave(up_lens)
        table.table[cell_rows.to(table.table.device), cols.to(table.table.device)] = \
            values.to(device=table.table.device, dtype=torch.int32)
    prefix_cpu, extend_cpu = prefix.tolist(), extend.tolist()
    dev = payload.to(device, non_blocking=True) if device.type != "cpu" else payload
    ids, pos, loc, req_rows, prefix, extend, logits = dev[:3 * T + 3 * B + R].split([T, T, T, B, B, B, R])
    token_rows = req_rows.repeat_interleave(extend, output_size=T)
    table.table[token_rows, pos] = loc.to(torch.int32)  # each new token's slot (decode writes skip write())
    return ForwardBatch(mode=_MODES[mode], input_ids=ids, positions=pos, out_cache_loc=loc, req_pool_indices=req_rows,
                        seq_lens=prefix + extend, prefix_lens=prefix, extend_lens=extend,
                        seq_lens_cpu=[p + e for p, e in zip(prefix_cpu, extend_cpu)], prefix_lens_cpu=prefix_cpu,
                        extend_lens_cpu=extend_cpu, req_to_token=table.table, logits_indices=logits)
