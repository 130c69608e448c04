"""Several processes, one run: torchrun's environment, the process group, and launching torchrun from Python.

torchrun starts one process per GPU (per node) and sets RANK, WORLD_SIZE and LOCAL_RANK. Each process trains
on its own share of every epoch's windows; DistributedDataParallel averages the gradients on the last
micro-step of each accumulation window. Only rank 0 writes to the run folder. See docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml

from tradelib.config import Config
from tradelib.paths import atomic_write_bytes, child_env
from tradelib.runs import RunBusy, check_run_free, lock_run, new_run_id, remove_if_unused, run_path


class LaunchFailed(RuntimeError):
    """torchrun ended with a non-zero code; the workers' own one-line error is in its output."""


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run, as torchrun describes it (one process without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    env = os.environ
    return DistEnv(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init_distributed(env: DistEnv, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on the CPU); on CUDA each local rank gets its own GPU."""
    if env.world == 1:
        return device
    if device.type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPUs on this node: "
                               f"use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":  # device_id binds the communicator to this rank's GPU
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return device


def cleanup_distributed(clean: bool = True) -> None:
    """Leave the process group. After a clean finish every rank first meets the others at a barrier, so none
    exits while rank 0 still writes the run's outputs; then the group is destroyed. After an error there is no
    barrier (the other ranks may never reach it): torchrun stops them when this process exits."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if clean and active():
        dist.barrier()
    gc.collect()  # objects that hold the group (DDP's reducer) go first
    dist.destroy_process_group()


def is_worker() -> bool:
    """True in a process torchrun started for a run of several processes."""
    return dist_env().world > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank (pickled): run ids, checkpoints, validation losses."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place sum or max over ranks, on the device (no host sync); a no-op in one process."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if active():
        dist.barrier()


def gather_object(obj: Any, dst: int = 0) -> list | None:
    """Every rank's object, in rank order, on rank `dst` (None elsewhere); [obj] in one process."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def shutdown_grace() -> float:
    """Seconds torchrun waits for its workers after passing a Ctrl-C or SIGTERM on, before it kills them: its
    --shutdown-timeout, which reaches the workers only as TORCH_ELASTIC_SHUTDOWN_TIMEOUT (30 when unset)."""
    return float(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", 30))


def node_others_sum(value: float) -> float:
    """On rank 0, the sum of `value` over the other ranks on its machine (torchrun's GROUP_RANK: the node);
    0 elsewhere and in one process."""
    if not active():
        return 0.0
    parts = gather_object((os.environ.get("GROUP_RANK", "0"), value))
    if parts is None:
        return 0.0
    return float(sum(v for node, v in parts[1:] if node == parts[0][0]))


def rank_rows(symbol_id: np.ndarray, rank: int, world: int) -> tuple[int, int]:
    """Rank `rank`'s rows [lo, hi) of a FeatureSet when every rank keeps only its share (shard_data): a run of
    whole symbols with about a world-th of the rows (rows are in symbol order)."""
    starts = np.r_[np.flatnonzero(np.r_[True, symbol_id[1:] != symbol_id[:-1]]), len(symbol_id)]
    if len(starts) - 1 < world:
        raise ValueError(f"shard_data: {world} processes but only {len(starts) - 1} symbols; each process needs at "
                         f"least one")
    cuts = [0]
    for k in range(1, world):
        at = int(np.argmin(np.abs(starts - k * len(symbol_id) / world)))
        cuts.append(min(max(at, cuts[-1] + 1), len(starts) - 1 - (world - k)))
    cuts.append(len(starts) - 1)
    return int(starts[cuts[rank]]), int(starts[cuts[rank + 1]])


@contextlib.contextmanager
def cpu_group():
    """torchrun's processes joined in a gloo group for barriers and small exchanges (a spread `prepare`), and
    the group left at the end (without the barrier after an error)."""
    env = dist_env()
    init_distributed(env, torch.device("cpu"))
    ok = False
    try:
        yield env
        ok = True
    finally:
        cleanup_distributed(clean=ok)


def needs_launch(cfg: Config) -> bool:
    """True where `cfg` asks for several GPUs and this process was not itself started by torchrun."""
    return cfg.n_gpus > 1 and "WORLD_SIZE" not in os.environ


def torchrun_command(config_file: Path, nproc: int) -> list[str]:
    """`torchrun --standalone --nproc_per_node N -m tradelib train -f FILE` via this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "tradelib", "train", "-f", str(config_file)]


def launch_distributed(cfg: Config) -> Path:
    """Run `cfg` under torchrun with `n_gpus` processes on this machine, streaming its output; the run folder.

    The whole config goes to the children as one YAML file in the run folder (`launch.yaml`), so every
    value reaches them exactly as given. A Ctrl-C (or a Jupyter interrupt) is passed on to torchrun.
    """
    run_id = cfg.run_id or new_run_id()
    folder = run_path(run_id)
    created = not folder.exists()
    check_run_free(folder)  # say it now, not after torchrun has started every process
    config_file = folder / "launch.yaml"
    atomic_write_bytes(yaml.safe_dump(cfg.replace(run_id=run_id).to_dict(), sort_keys=False).encode(), config_file)
    cmd = torchrun_command(config_file, cfg.n_gpus)
    print("launching: torchrun " + " ".join(cmd[3:]), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env())
    try:
        # bytes as they come (tqdm redraws with \r, not \n), so progress shows live in a terminal or notebook
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)  # torchrun passes it on to the workers
        proc.wait()
        if created:
            discard_launch(folder)
        raise
    if rc != 0:
        if created:
            discard_launch(folder)
        raise LaunchFailed(f"torchrun exited with code {rc} (run {run_id}); its output is above")
    return folder


def discard_launch(folder: Path) -> None:
    """A launch whose every process failed before writing anything leaves no run folder (it held only the
    launch's own launch.yaml). Never raises; a folder another process holds stays."""
    try:
        lock = lock_run(folder)
    except (RunBusy, OSError):
        return
    try:
        remove_if_unused(folder, lock, also=("launch.yaml",))
    finally:
        if lock is not None:
            lock.release()
