"""What the benchmarks share: where their lines go, pipelined transactions, CPU time of process trees."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ledger.chain.sender import TxSender

# Where a benchmark prints its figures, one line at a time.
Report = Callable[[str], None]


def send_all(sender: TxSender, txs: list[dict[str, Any]]) -> None:
    """Pipeline transactions from one key: send all, then wait for each receipt.

    Gas is given up front: an estimate would run before the earlier transactions are mined.
    """
    pending = [(tx, *sender.send({**tx, "gas": 200_000})) for tx in txs]  # type: ignore[typeddict-item]
    for tx, tx_hash, nonce in pending:
        sender.wait(tx_hash, nonce, tx)  # type: ignore[arg-type]


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/<pid>/stat after "pid (comm) ") of every process that can be read now:
    state, ppid, pgrp, ... utime at [11], stime at [12], in clock ticks."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        yield int(entry), stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` and all its descendants, from /proc (0 where it cannot be read)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for process, fields in proc_stats():
        parents.setdefault(int(fields[1]), []).append(process)
        times[process] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(parents.get(current, []))
    return total
