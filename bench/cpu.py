"""CPU time of processes and of the whole machine, from ``/proc`` (Linux), to show where the
two cores went during a measurement."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Clock ticks per second, the unit of ``/proc`` CPU times.
_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants; 0 when it is gone."""
    total = 0.0
    for one in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    return total


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = [int(child) for child in children]
    for child in list(found):
        found += _descendants(child)
    return found


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / _TICKS


@dataclass
class CpuMeter:
    """CPU used by some processes, this process and the machine between start and stop."""

    pids: dict[str, int]

    def __post_init__(self) -> None:
        self._start = self._sample()

    def _sample(self) -> dict[str, float]:
        sample = {name: process_tree_cpu_s(pid) for name, pid in self.pids.items()}
        sample["bench"] = sum(os.times()[:2])
        sample["machine"] = machine_busy_s()
        return sample

    def stop(self) -> dict[str, float]:
        """CPU seconds used since creation, per name (``bench`` is this process)."""
        end = self._sample()
        return {name: round(end[name] - self._start[name], 2) for name in end}
