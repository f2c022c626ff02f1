"""Helpers for the tests that run several ``torch.distributed`` gloo workers on CPU.

``spawn(worker, world, *args)`` starts ``world`` processes running
``worker(rank, world, port, *args)`` on a free local port. Inside a worker, ``init_gloo`` joins a
plain process group, or ``accelerate_env`` sets the variables ``accelerate`` reads, so that an
``Accelerator`` (or :func:`rdpo_theory.torch.train.make_accelerator`) runs data-parallel on CPU
(MULTI_CPU, gloo).
"""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker, world: int, *args) -> None:
    """Run ``worker(rank, world, port, *args)`` in ``world`` processes and wait for them."""
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(world, free_port(), *args), nprocs=world, join=True)


def init_gloo(rank: int, world: int, port: int) -> None:
    """Join a gloo process group of ``world`` workers on ``port``."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )


def accelerate_env(rank: int, world: int, port: int) -> None:
    """The environment of one ``accelerate launch`` worker on CPU (one intra-op thread)."""
    import torch

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        ACCELERATE_USE_CPU="true",  # data parallel on CPU: accelerate picks gloo
    )
    torch.set_num_threads(1)
