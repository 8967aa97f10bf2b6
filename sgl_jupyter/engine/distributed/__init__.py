"""Tensor parallelism over the GPUs of one host: rank 0 in this process, one worker process per
other rank (``coordinator.py`` starts and watches them, ``worker.py`` is their loop,
``batch_comm.py`` ships each ForwardBatch, ``parallel_state.py`` holds the groups and collectives)."""
