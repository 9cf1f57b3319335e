"""Process groups for commands that spread work over processes (`vpp eval`, `vpp segment`).

A command runs as one process, as one rank of a `torchrun` launch (RANK/WORLD_SIZE/LOCAL_RANK in
the environment), or as the launcher of `--shards K` local workers (`spawn`). Ranks form a gloo
group: it only carries small control messages (plans, outcomes, barriers), so the CPU backend
serves CUDA runs too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp

from vppcli.errors import UsageError, VppError

T = TypeVar("T")

# Ranks finish at different times; the default 30 min gloo timeout would fail slow stragglers.
GROUP_TIMEOUT = timedelta(hours=48)
_POLL_SECONDS = 0.5
_STOP_SECONDS = 10.0  # how long a terminated worker gets to exit before the launcher stops waiting


@dataclass(frozen=True)
class Rank:
    """One process of a group: `rank` of `world`, `local_rank` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def env_rank() -> Rank:
    """This process's place in a `torchrun` launch; a lone process is rank 0 of 1."""
    return Rank(*(int(os.environ.get(key, default)) for key, default in
                  (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))))


def check_shards(shards: int) -> None:
    """Refuse local workers inside a torchrun launch: torchrun already decides the processes."""
    if shards < 1:
        raise UsageError(f"--shards must be at least 1, got {shards}")
    if shards > 1 and env_rank().world > 1:
        raise UsageError("--shards cannot be combined with torchrun; use --nproc-per-node instead")


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of one process: `name` is cpu, cuda or auto; CUDA processes take cuda:LOCAL_RANK."""
    if name not in ("cpu", "cuda", "auto"):
        raise UsageError(f"--device must be cpu, cuda or auto, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


@contextlib.contextmanager
def process_group(rank: Rank, init_method: str | None = None) -> Iterator[None]:
    """Join the gloo group of `rank.world` processes for the block (a lone process joins none).

    `init_method` None reads torchrun's environment. On success the ranks leave together, so that
    none tears the group down under a peer still talking to it; on an error the rank just leaves.
    """
    if rank.world == 1:
        yield
        return
    dist.init_process_group("gloo", init_method=init_method, rank=rank.rank, world_size=rank.world,
                            timeout=GROUP_TIMEOUT)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def barrier(rank: Rank) -> None:
    if rank.world > 1:
        dist.barrier()


def from_root(rank: Rank, decide: Callable[[], T]) -> T:
    """`decide()` run once, on rank 0, and its value on every rank; a VppError it raises is raised
    on every rank, so that no rank waits for a value that never comes."""
    value: Any = None
    if rank.is_root:
        try:
            value = decide()
        except VppError as error:
            value = error
    if rank.world > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    if isinstance(value, VppError):
        raise value
    return value  # type: ignore[no-any-return]


def gather_to_root(rank: Rank, value: T) -> list[T] | None:
    """Every rank's `value` (in rank order) on rank 0; None on the other ranks."""
    if rank.world == 1:
        return [value]
    gathered: list[Any] | None = [None] * rank.world if rank.is_root else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


@dataclass(frozen=True)
class _Returned:
    """What rank 0's worker returned, on its way to the launcher."""

    value: Any


def spawn(worker: Callable[..., T], args: tuple[Any, ...], world: int, threads: int | None = None,
          on_poll: Callable[[], None] | None = None) -> T | None:
    """Run `worker(rank, *args)` in `world` new processes, a gloo group on 127.0.0.1, and return
    what rank 0's call returned. `threads` None shares the CPU cores among the workers instead of
    oversubscribing them. `on_poll()` is called every half second while they run (progress).

    A VppError raised by a worker is raised here; any other failure raises torch's exception.
    On Ctrl-C (or any error here) the workers are stopped before the exception goes on.
    """
    check_shards(world)
    # torch warns as it stops the other workers after one failed: expected, and not the error to show.
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    channel = torch_mp.get_context("spawn").SimpleQueue()
    context = torch_mp.start_processes(_entry, args=(worker, args, world, free_port(), threads, channel),
                                       nprocs=world, join=False, start_method="spawn")
    messages: list[Any] = []
    try:
        # Read messages while waiting: a large one blocks its sender until it is read.
        while not context.join(timeout=_POLL_SECONDS):
            messages.extend(_drain(channel))
            if on_poll is not None:
                on_poll()
    except (torch_mp.ProcessExitedException, torch_mp.ProcessRaisedException):
        # join() has stopped the other workers; a VppError a worker sent back is the user's to see.
        errors = [m for m in [*messages, *_drain(channel)] if isinstance(m, VppError)]
        if errors:
            raise errors[0] from None
        raise
    except BaseException:  # e.g. Ctrl-C: stop the workers (what they finished is theirs to keep)
        for process in context.processes:
            process.terminate()  # nothing for those already gone
        for process in context.processes:
            process.join(_STOP_SECONDS)
        raise
    returned = [m for m in [*messages, *_drain(channel)] if isinstance(m, _Returned)]
    return returned[0].value if returned else None


def _drain(channel: Any) -> list[Any]:
    messages = []
    while not channel.empty():
        messages.append(channel.get())
    return messages


def _entry(index: int, worker: Callable[..., Any], args: tuple[Any, ...], world: int, port: int,
           threads: int | None, channel: Any) -> None:
    """One process of `spawn`: joins the group, runs the worker, reports back through `channel`."""
    if threads is None:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    rank = Rank(index, world, index)
    with process_group(rank, f"tcp://127.0.0.1:{port}"):
        try:
            value = worker(rank, *args)
        except VppError as error:
            # Sent before the group goes down: the peers fail only after that, so the launcher finds
            # this error queued whichever failed process it notices first.
            channel.put(error)
            raise SystemExit(error.exit_code) from None
    if rank.is_root:
        channel.put(_Returned(value))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


__all__ = ["GROUP_TIMEOUT", "Rank", "barrier", "check_shards", "env_rank", "free_port", "from_root",
           "gather_to_root", "process_group", "rank_device", "spawn"]
