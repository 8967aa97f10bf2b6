"""A tensor-parallel worker process (ranks 1..N-1): load this rank's shard, tell rank 0 how much KV
fits, receive the plan, join the process groups, build the same runner as rank 0, then run every
batch rank 0 broadcasts until it says stop. It exits when rank 0's process goes away (parent pid
watch; the broken control connection also raises), never outliving the notebook kernel."""
from __future__ import annotations

import os
import signal
import threading
import time
import traceback

_PARENT_POLL_S = 0.5


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        time.sleep(_PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(3)


def worker_main(rank: int, size: int, args_dict: dict, store_port: int, conn, parent_pid: int) -> None:
    # Interrupting a notebook cell signals the kernel's whole process group: the engine, not its
    # workers, decides what an interrupt means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="sgl-tp-parent-watch", daemon=True).start()
    try:
        _serve(rank, size, args_dict, store_port, conn)
    except BaseException:  # noqa: BLE001 - reported to rank 0 (if it still listens), then a non-zero exit
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:  # noqa: BLE001
            pass
        os._exit(1)
    os._exit(0)


def _serve(rank: int, size: int, args_dict: dict, store_port: int, conn) -> None:
    import torch
    import torch.distributed as dist

    from ..config import EngineArgs
    from ..loader import load_model
    from ..rank_setup import build_rank, kv_capacity
    from .batch_comm import recv_batch
    from .parallel_state import TPGroup, destroy_process_groups, init_process_groups

    args = EngineArgs(**args_dict)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:  # share the cores with rank 0 instead of every rank spinning on all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    tp = TPGroup(rank, size)
    loaded = load_model(args.model_path, load_format=args.load_format, dtype=args.dtype, device=args.device,
                        tokenizer_path=args.tokenizer_path, trust_remote_code=args.trust_remote_code,
                        seed=args.random_seed, tp=tp, with_tokenizer=False, quantization=args.quantization)
    conn.send(("loaded", kv_capacity(args, loaded, size)))
    msg = conn.recv()
    if msg[0] != "plan":
        return  # rank 0 gave up before the groups formed
    _, kv_size, attention_backend = msg
    store = dist.TCPStore("127.0.0.1", store_port, size, is_master=False)
    init_process_groups(tp, store, loaded.device)
    state = build_rank(args, loaded, kv_size, attention_backend, size, progress=False)
    with torch.inference_mode():
        while True:
            fb = recv_batch(tp, state.req_pool, loaded.device)
            if fb is None:
                break
            state.runner.forward(fb)
    destroy_process_groups(tp)
