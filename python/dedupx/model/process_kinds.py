"""What a process is: ``vm`` (a QEMU/KVM guest), ``container`` or ``process``; one rule."""

from __future__ import annotations

import polars as pl

CONTAINER_CGROUP = r"docker|containerd|libpod|lxc|kubepods|crio|machine\.slice|podman"


def classify_processes(processes: pl.DataFrame) -> pl.DataFrame:
    """Adds ``kind``: ``vm`` for QEMU/KVM, ``container`` for processes in a container
    cgroup or in another PID namespace than PID 1's, else ``process``. Needs ``pid``,
    ``comm``, ``argv0``, ``cgroup`` and ``pid_ns`` (nulls allowed)."""
    init_ns = processes.filter(pl.col("pid") == 1)["pid_ns"]
    host_ns = init_ns[0] if init_ns.len() else None
    exe = pl.col("argv0").str.split("/").list.last()
    is_vm = (
        exe.str.starts_with("qemu-system")
        | exe.str.starts_with("qemu-kvm")
        | pl.col("comm").str.starts_with("qemu-system")
        | (pl.col("comm") == "kvm")
    )
    other_ns = pl.lit(False) if host_ns is None else (pl.col("pid_ns") != host_ns)
    is_container = pl.col("cgroup").str.contains(CONTAINER_CGROUP).fill_null(False) | other_ns
    return processes.with_columns(
        pl.when(is_vm)
        .then(pl.lit("vm"))
        .when(is_container.fill_null(False))
        .then(pl.lit("container"))
        .otherwise(pl.lit("process"))
        .alias("kind")
    )


__all__ = ["CONTAINER_CGROUP", "classify_processes"]
