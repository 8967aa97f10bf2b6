"""The engine on CUDA: greedy output equals HF transformers on the embedded model (float32) for every
attention backend, with and without CUDA graphs; a dummy 8B-shape model in bf16 stays within bf16
tolerance of HF on the same weights. Skipped without a GPU (run `make gpu-test`)."""
from __future__ import annotations

import gc
import os

import pytest
import torch

from tests.conftest import assert_no_leak
from .test_oracle import MAX_NEW, _prompts

pytestmark = pytest.mark.gpu


def _free(*objs) -> None:
    for o in objs:
        if hasattr(o, "shutdown"):
            o.shutdown()
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def hf_cuda_refs(model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to("cuda").eval()
    prompts = _prompts(tok)
    refs = []
    for p in prompts:
        ids = tok(p, add_special_tokens=False, return_tensors="pt").input_ids.to("cuda")
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False,
                              pad_token_id=tok.eos_token_id)
        refs.append(out[0, ids.shape[1]:].tolist())
    _free(hf)
    return prompts, refs


def _backends() -> list[str]:
    from sgl_jupyter.engine.attention import available_backends

    return available_backends(torch.device("cuda"))


@pytest.mark.parametrize("mode", ["multi_step", "cuda_graphs", "eager"])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_embedded_model_fp32_matches_hf(model_path, hf_cuda_refs, backend, mode):
    """multi_step: 8 greedy steps per graph launch (the default on CUDA; 20 new tokens end mid-burst);
    cuda_graphs: one step per launch; eager: no graphs."""
    from sgl_jupyter import Engine

    if backend == "torch" and mode == "multi_step":
        pytest.skip("the torch backend runs decode eagerly")
    prompts, refs = hf_cuda_refs
    eng = Engine(model_path, device="cuda", dtype="float32", attention_backend=backend,
                 disable_cuda_graph=mode == "eager", num_continuous_decode_steps=8 if mode == "multi_step" else 1,
                 max_total_tokens=20000, cuda_graph_max_bs=16)
    try:
        assert (eng.runner.graphs is not None) == (mode != "eager" and backend != "torch")
        assert eng.scheduler.continuous_decode_steps == (8 if mode == "multi_step" else 1)
        mismatches = []
        for p, ref in zip(prompts, refs):  # one by one (bs=1 decode graphs) ...
            if eng.generate(p, {"max_new_tokens": MAX_NEW, "temperature": 0})["output_ids"] != ref:
                mismatches.append(p)
        outs = eng.generate(prompts, {"max_new_tokens": MAX_NEW, "temperature": 0})  # ... and batched (padded graphs)
        mismatches += [f"[batched] {p}" for p, o, ref in zip(prompts, outs, refs) if o["output_ids"] != ref]
        assert not mismatches, mismatches
        assert_no_leak(eng)
    finally:
        _free(eng)


def test_overlapped_multi_step_streams_aborts_and_leaks_nothing(model_path, hf_cuda_refs):
    """Multi-step launches overlap the host's commit of the previous launch (the next graph is already on
    the GPU): a long stream aborted while a launch is in flight ends with ``abort`` and gives its KV back,
    streamed deltas add up to the text, and the engine's outputs afterwards still equal HF."""
    from sgl_jupyter import Engine

    prompts, refs = hf_cuda_refs
    eng = Engine(model_path, device="cuda", dtype="float32", attention_backend="triton",
                 num_continuous_decode_steps=4, max_total_tokens=20000, cuda_graph_max_bs=16)
    try:
        chunks = []
        for chunk in eng.generate(prompts[1], {"max_new_tokens": 400, "temperature": 0, "ignore_eos": True},
                                  stream=True, rid="long"):
            chunks.append(chunk)
            if len(chunks) == 6:
                eng.abort("long")
        final = chunks[-1]
        assert final["meta_info"]["finish_reason"]["type"] == "abort"
        assert "".join(c["delta"] for c in chunks) == final["text"]
        assert 6 <= final["meta_info"]["completion_tokens"] < 400
        assert eng.scheduler.overlapped_launches > 0
        outs = eng.generate(prompts, {"max_new_tokens": MAX_NEW, "temperature": 0})
        assert [o["output_ids"] for o in outs] == refs
        assert_no_leak(eng)
    finally:
        _free(eng)


def test_overlap_goes_on_while_requests_leave_the_batch(model_path, hf_cuda_refs):
    """Requests with different max_new_tokens leave a multi-step batch at different launches; the next
    launch is still enqueued before the previous one is committed, its rows fed from the device tokens of
    the rows that go on (``carry``), and every output equals HF's greedy tokens (cut at its own length),
    with no KV leaked. Such a step never waits for the GPU except for the launch it commits (CUDA's sync
    debug mode raises inside it otherwise): finishing requests free their KV from the host's copy of the
    request table, not by reading the device's."""
    from sgl_jupyter import Engine

    prompts, refs = hf_cuda_refs
    eng = Engine(model_path, device="cuda", dtype="float32", attention_backend="triton",
                 num_continuous_decode_steps=4, max_total_tokens=20000, cuda_graph_max_bs=16)
    carried = []  # (rows in the launch, rows fed from a different index of the launch before)
    launch = eng.runner.launch_decode_multi_step

    def spy(input_ids, positions, locs, rows, carry=None):
        if carry:
            carried.append((len(carry), sum(c != i for i, c in enumerate(carry))))
        return launch(input_ids, positions, locs, rows, carry)

    eng.runner.launch_decode_multi_step = spy
    step_in_flight = eng.scheduler._step_in_flight

    def no_sync_step():
        torch.cuda.set_sync_debug_mode("error")
        try:
            step_in_flight()
        finally:
            torch.cuda.set_sync_debug_mode("default")

    eng.scheduler._step_in_flight = no_sync_step
    try:
        lens = [MAX_NEW - (i * 3) % 11 for i in range(len(prompts))]
        outs = eng.generate(prompts, [{"max_new_tokens": n, "temperature": 0} for n in lens])
        assert [o["output_ids"] for o in outs] == [ref[:n] for ref, n in zip(refs, lens)]
        assert eng.scheduler.overlapped_launches > 0
        assert any(moved for _, moved in carried), carried  # a launch after some rows had left
        assert_no_leak(eng)
        assert torch.equal(eng.req_pool.host, eng.req_pool.table.cpu())  # every write reached both copies
    finally:
        _free(eng)


def test_auto_backend_in_float32_avoids_flashinfer(model_path):
    """FlashInfer has no float32 kernels: auto picks Triton, and asking for it names the fix."""
    from sgl_jupyter import Engine
    from sgl_jupyter.engine.attention import choose_backend_name

    assert choose_backend_name("auto", torch.device("cuda"), dtype=torch.float32) != "flashinfer"
    if "flashinfer" in _backends():
        with pytest.raises(ValueError, match="float32"):
            Engine(model_path, device="cuda", dtype="float32", attention_backend="flashinfer")


def _within_bf16_tolerance(eng, hf, prompt: list[int], n: int = 32) -> dict:
    """bf16 greedy cannot be compared token for token (rounding flips near-ties), so compare errors
    against float32 truth: HF scores the engine's own sequence teacher-forced in bf16 and then in
    float32 (``hf`` is converted in place). The engine's chosen tokens must be as close to the float32
    argmax as HF-bf16's own choices are, and its prompt logprobs as close as HF-bf16's."""
    out = eng.generate(input_ids=prompt, sampling_params={"max_new_tokens": n, "temperature": 0, "ignore_eos": True},
                       return_logprob=True, logprob_start_len=0)
    gen = out["output_ids"]
    assert len(gen) == n
    seq = torch.tensor([prompt + gen], device="cuda")
    with torch.no_grad():
        l16 = torch.log_softmax(hf(seq).logits[0].float(), dim=-1)
        hf.float()
        l32 = torch.log_softmax(hf(seq).logits[0].float(), dim=-1)
    k = len(prompt)
    s32, s16 = l32[k - 1:-1], l16[k - 1:-1]  # the distributions the generated tokens were chosen from
    best = s32.max(dim=1).values
    gap_engine = (best - s32.gather(1, torch.tensor(gen, device="cuda").view(-1, 1)).squeeze(1)).max().item()
    gap_hf = (best - s32.gather(1, s16.argmax(dim=1, keepdim=True)).squeeze(1)).max().item()
    targets = seq[0, 1:k].view(-1, 1)
    truth = l32[:k - 1].gather(1, targets).squeeze(1).cpu()
    ours = torch.tensor([x[0] for x in out["meta_info"]["input_token_logprobs"][1:]])
    err_engine = (ours - truth).abs().max().item()
    err_hf = (l16[:k - 1].gather(1, targets).squeeze(1).cpu() - truth).abs().max().item()
    res = dict(gap_engine=gap_engine, gap_hf=gap_hf, err_engine=err_engine, err_hf=err_hf)
    assert gap_engine <= max(2 * gap_hf, 0.02), res
    assert err_engine <= 2 * err_hf + 0.01, res
    return res


def test_flashinfer_bf16_embedded_model_within_tolerance(model_path):
    from transformers import AutoModelForCausalLM

    from sgl_jupyter import Engine

    if "flashinfer" not in _backends():
        pytest.skip("flashinfer is not importable here")
    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).to("cuda").eval()
    for graphs in (True, False):
        eng = Engine(model_path, device="cuda", dtype="bfloat16", attention_backend="flashinfer",
                     disable_cuda_graph=not graphs, max_total_tokens=8192, cuda_graph_max_bs=8)
        try:
            assert eng.attention_backend == "flashinfer"
            ids = eng.tokenizer.encode("The history of the city of Paris begins", add_special_tokens=False)
            _within_bf16_tolerance(eng, hf.to(torch.bfloat16), ids)
            assert_no_leak(eng)
        finally:
            _free(eng)
    _free(hf)


def shape_tokenizer():
    """A tokenizer for the shipped 8B/7B configs (they have none): the carried ``.tok/`` that
    scripts/gpu_run.sh names in SGL_TOK, else the embedded model's (None); skip when neither is here."""
    if os.environ.get("SGL_TOK"):
        return os.environ["SGL_TOK"]
    if os.environ.get("SGL_NO_EMBEDDED_MODEL"):
        pytest.skip("no tokenizer for the shipped configs: carry .tok/ (docs/gpu.md) or the embedded model")
    return None


@pytest.mark.parametrize("shape", ["llama3-8b", "qwen2-7b"])
def test_dummy_8b_shape_bf16_within_tolerance_of_hf(shape):
    from transformers import AutoConfig, AutoModelForCausalLM

    from sgl_jupyter import Engine
    from sgl_jupyter.bench.latency import resolve_model_path

    if torch.cuda.get_device_properties(0).total_memory < 60 * 2**30:
        pytest.skip("needs about 55 GB of GPU memory")
    path = resolve_model_path(shape)
    tokenizer = shape_tokenizer()
    torch.manual_seed(0)
    with torch.device("cuda"):
        hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.bfloat16).eval()
    eng = Engine(path, load_format="dummy", dtype="bfloat16", device="cuda", max_total_tokens=8192,
                 max_running_requests=8, cuda_graph_max_bs=8, tokenizer_path=tokenizer)
    try:
        with torch.no_grad():  # the same random weights in both (copied in place: the graphs stay valid)
            eng.loaded.model.load_weights((n, t) for n, t in hf.state_dict().items())
        g = torch.Generator().manual_seed(1)
        print(shape, _within_bf16_tolerance(eng, hf, torch.randint(100, 30000, (64,), generator=g).tolist()))
    finally:
        _free(eng, hf)
