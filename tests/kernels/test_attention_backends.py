"""The GPU attention backends behind the engine's AttentionBackend interface, driven like the
scheduler drives them (real KVPool, ReqToTokenPool, ForwardBatch): prefill, a prefix-sharing
extend, then decode steps, each compared with the torch reference backend on its own pool."""
from __future__ import annotations

import pytest
import torch

from sgl_jupyter.engine.attention.torch_ref import TorchAttnBackend
from sgl_jupyter.engine.forward_batch import ForwardBatch, ForwardMode
from sgl_jupyter.engine.kv_pool import KVPool, ReqToTokenPool

from .helpers import REL_TOL, rel_err


class Replay:
    """Two pools fed the same steps: one through the backend under test, one through the reference."""

    def __init__(self, backend_cls, hq, hkv, d, dtype, device, layers=2, slots=4000, kv_dtype=None,
                 kv_scales=(None, None)):
        dev = torch.device(device)
        self.hq, self.hkv, self.d, self.dtype, self.dev = hq, hkv, d, dtype, dev
        self.pools = [KVPool(slots, layers, hkv, d, kv_dtype or dtype, dev, *kv_scales) for _ in range(2)]
        self.table = ReqToTokenPool(8, 4096, dev)
        kw = dict(kv_pool=self.pools[0], req_to_token=self.table, max_bs=8)
        self.backends = [backend_cls(hq, hkv, d, dev, **kw), TorchAttnBackend(hq, hkv, d, dev)]
        self.layers = layers
        self.lens: dict[int, int] = {}  # request row -> tokens in the table

    def step(self, mode: ForwardMode, rows: list[int], extend: list[int], shared: dict[int, tuple[int, int]] = {}):
        """``shared[row] = (src_row, n)``: the row starts with the first n slots of src_row (a prefix hit)."""
        for r, (src, n) in shared.items():
            self.table.write(r, 0, self.table.read(src, n))
            self.lens[r] = n
        prefix = [self.lens.get(r, 0) for r in rows]
        loc = self.pools[0].alloc(sum(extend))
        self.pools[1].alloc(sum(extend))
        at = 0
        for r, p, e in zip(rows, prefix, extend):
            self.table.write(r, p, loc[at:at + e])
            self.lens[r] = p + e
            at += e
        T = sum(extend)
        pos = [p + i for p, e in zip(prefix, extend) for i in range(e)]
        fb = ForwardBatch.build(mode, [0] * T, pos, loc, rows, prefix, extend, self.table.table, [], self.dev)
        worst = 0.0
        for layer in range(self.layers):
            q = torch.randn(T, self.hq, self.d, device=self.dev).to(self.dtype)
            k = torch.randn(T, self.hkv, self.d, device=self.dev).to(self.dtype)
            v = torch.randn(T, self.hkv, self.d, device=self.dev).to(self.dtype)
            outs = []
            for be, pool in zip(self.backends, self.pools):
                be.init_forward_metadata(fb)
                outs.append(be.forward(q, k, v, layer, fb, pool, self.d ** -0.5))
            assert outs[0].shape == (T, self.hq * self.d)
            worst = max(worst, rel_err(outs[0], outs[1]))
        return worst

    def run_script(self, decode_steps: int, long: bool) -> float:
        n = 900 if long else 40
        errs = [self.step(ForwardMode.EXTEND, [0, 3], [n, 10]),
                self.step(ForwardMode.EXTEND, [5, 1], [7, 1], shared={5: (0, n - 10)})]
        for _ in range(decode_steps):
            errs.append(self.step(ForwardMode.DECODE, [0, 3, 5, 1], [1, 1, 1, 1]))
        for pool_a, pool_b in [(self.pools[0].k_buffers, self.pools[1].k_buffers),
                               (self.pools[0].v_buffers, self.pools[1].v_buffers)]:
            assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8))  # bytes: fp8 has no torch.equal
                       for a, b in zip(pool_a, pool_b)), "stored K/V differ"
        return max(errs)


def test_triton_backend_matches_torch_backend_small(interp_device):
    from sgl_jupyter.engine.attention.triton_backend import TritonAttnBackend

    assert Replay(TritonAttnBackend, 6, 2, 32, torch.float32, interp_device).run_script(2, long=False) < 1e-5


def test_triton_backend_matches_torch_backend_on_fp8_pool_small(interp_device):
    """--kv-cache-dtype fp8_e4m3: each layer's own scales reach the store and both attention kernels."""
    from sgl_jupyter.engine.attention.triton_backend import TritonAttnBackend

    replay = Replay(TritonAttnBackend, 6, 2, 32, torch.float32, interp_device, kv_dtype=torch.float8_e4m3fn,
                    kv_scales=([0.5, 0.02], [0.25, 0.05]))
    assert replay.run_script(2, long=False) < 1e-5


def test_triton_backend_decode_metadata_is_host_free(interp_device):
    """Decode metadata is views of preallocated scratch: the same storage for every call of a size."""
    from sgl_jupyter.engine.attention.triton_backend import TritonAttnBackend

    be = TritonAttnBackend(8, 2, 32, torch.device(interp_device), max_bs=16)
    a, b = be.decode_meta(5), be.decode_meta(5)
    assert a.mid_o.data_ptr() == b.mid_o.data_ptr() and a.mid_o.shape[:3] == (5, 8, be.num_kv_splits(5))
    big = be.decode_meta(40)  # past max_bs: grows instead of failing
    assert big.mid_o.shape[0] == 40 and be.max_bs == 40


@pytest.mark.gpu
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (9, 3, 64), (28, 4, 128)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_backend_matches_torch_backend_cuda(hq, hkv, d, dtype):
    from sgl_jupyter.engine.attention.triton_backend import TritonAttnBackend

    assert Replay(TritonAttnBackend, hq, hkv, d, dtype, "cuda").run_script(4, long=True) < REL_TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (9, 3, 64)])
def test_triton_backend_matches_torch_backend_on_fp8_pool_cuda(hq, hkv, d):
    from sgl_jupyter.engine.attention.triton_backend import TritonAttnBackend

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("no e4m3 casts before compute capability 8.9")
    replay = Replay(TritonAttnBackend, hq, hkv, d, torch.bfloat16, "cuda", kv_dtype=torch.float8_e4m3fn,
                    kv_scales=([0.5, 0.02], [0.25, 0.05]))
    assert replay.run_script(4, long=True) < REL_TOL[torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (9, 3, 64)])
def test_flashinfer_backend_matches_torch_backend_cuda(hq, hkv, d):
    from sgl_jupyter.engine.attention import flashinfer_backend

    if not flashinfer_backend.is_available():
        pytest.skip("flashinfer is not installed")
    err = Replay(flashinfer_backend.FlashInferAttnBackend, hq, hkv, d, torch.bfloat16, "cuda").run_script(
        4, long=True)
    assert err < REL_TOL[torch.bfloat16]
