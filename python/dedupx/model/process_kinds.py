"""What a process is: ``vm`` (a QEMU/KVM guest), ``container`` or ``process``; one rule.

Also the one definition of a container's group: the leaf of its cgroup (the path of the last
line of /proc/PID/cgroup, the v2 line on a unified or hybrid host)."""

from __future__ import annotations

import polars as pl

CONTAINER_CGROUP = r"docker|containerd|libpod|lxc|kubepods|crio|machine\.slice|podman"


def classify_processes(processes: pl.DataFrame) -> pl.DataFrame:
    """Adds ``kind``: ``vm`` for QEMU/KVM, ``container`` for processes in a container
    cgroup or in another PID namespace than PID 1's, else ``process``. Needs ``pid``,
    ``comm``, ``argv0``, ``cgroup`` and ``pid_ns`` (nulls allowed)."""
    host_ns = host_pid_ns(processes)
    exe = pl.col("argv0").str.split("/").list.last()
    is_vm = (
        exe.str.starts_with("qemu-system")
        | exe.str.starts_with("qemu-kvm")
        | pl.col("comm").str.starts_with("qemu-system")
        | (pl.col("comm") == "kvm")
    )
    known = pl.col("pid_ns").is_not_null() & (pl.col("pid_ns") != 0)
    other_ns = pl.lit(False) if host_ns is None else known & (pl.col("pid_ns") != host_ns)
    is_container = pl.col("cgroup").str.contains(CONTAINER_CGROUP).fill_null(False) | other_ns
    return processes.with_columns(
        pl.when(is_vm)
        .then(pl.lit("vm"))
        .when(is_container.fill_null(False))
        .then(pl.lit("container"))
        .otherwise(pl.lit("process"))
        .alias("kind")
    )


def host_pid_ns(processes: pl.DataFrame) -> int | None:
    """The host's PID namespace: PID 1's, or where PID 1's cannot be read (the capture
    lacks it, or records 0 for an unreadable link), kthreadd's: kernel threads always live
    in the initial namespace. None if neither is known."""
    for pid, name in ((1, None), (2, "kthreadd")):
        row = processes.filter(pl.col("pid") == pid)
        if name is not None:
            row = row.filter(pl.col("comm") == name)
        ns = row["pid_ns"].to_list()
        if ns and ns[0]:
            return int(ns[0])
    return None


def cgroup_leaf() -> pl.Expr:
    """A process's cgroup as one path: the last line of its /proc/PID/cgroup, after the
    controllers field (``0::/system.slice/docker-....scope`` gives ``/system.slice/...``)."""
    return pl.col("cgroup").str.strip_chars().str.split("\n").list.last().str.split(":").list.last()


__all__ = ["CONTAINER_CGROUP", "cgroup_leaf", "classify_processes", "host_pid_ns"]
