"""The cores this process may use, and those that other processes leave it: shared machines give a
job fewer than the machine has, and fewer at some moments than at others.

A Kubernetes pod with a CPU limit, a CI runner or a ``taskset`` sees every core of the host in
``os.cpu_count()``, and torch starts a thread per core it may run on. Those threads wait for each
other by spinning, so where another process keeps a core busy, a thread that cannot run holds up
the others while the spinning burns the share both need: training on 2 cores fell 3–5× beside one
busy process, where losing a core should cost 2× at most (issue 19, BENCHMARKS.md "Shared CPUs").
Letting the threads sleep instead (``OMP_WAIT_POLICY=PASSIVE``) was measured and rejected: it
made training alone 2.5× slower, as every wait then costs a wake-up. So:

- :func:`available_cores` counts the cores the process may use: its CPU affinity, at most its
  cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) rounded
  down, at least 1 (as Go's automaxprocs: a 1.5-core quota runs one thread unthrottled rather than
  two throttled);
- :class:`CoreWatch` measures how many of them other processes leave free (``/proc/stat``'s busy
  time on those cores, less this process's own), so training runs as many threads as there are
  free cores, measured again as it goes (:func:`genai_pipeline.training.fit_loop`).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
from dataclasses import dataclass
from pathlib import Path

#: where the process's cgroups are mounted (in a container: its own)
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: the kernel's per-CPU time counters
PROC_STAT = Path("/proc/stat")


def available_cores(root: Path = CGROUP_ROOT) -> int:
    """The cores this process may keep busy: its CPU affinity, at most its cgroup quota."""
    quota = cgroup_quota(root)
    allowed = len(_affinity())
    return max(1, min(allowed, math.floor(quota)) if quota is not None else allowed)


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup's CPU quota in cores (None: no quota, or no cgroup to read)."""
    try:
        limit, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000"
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    for folder in ("cpu", "cpu,cpuacct"):  # cgroup v1: a quota of -1 is none
        try:
            quota = int((root / folder / "cpu.cfs_quota_us").read_text())
            period = int((root / folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


#: OpenMP runtimes torch is built with: GNU's (Linux wheels), LLVM's and Intel's
OPENMP_RUNTIMES = ("libgomp", "libomp", "libiomp5")
#: ``omp_pause_hard``: a pause that frees the runtime's threads (OpenMP 5.0)
OMP_PAUSE_HARD = 2


def release_openmp_team(maps: Path = Path("/proc/self/maps")) -> bool:
    """Free the calling thread's OpenMP team (``omp_pause_resource_all(omp_pause_hard)``); the
    next parallel step in this thread starts a new one. True when a loaded runtime did.

    OpenMP keeps a team of threads per thread that runs torch's parallel code. Before shards
    sample side by side in pool threads, the team of the thread that trained is released: with
    it alive there are more OpenMP threads than cores, and libgomp then lets waiting threads spin
    only briefly before they sleep, so every parallel step waits for a wake-up (a loop of small
    parallel steps: 0.73 s in the first thread, 1.06 s in a second thread beside its team, 0.71 s
    with the team released; ``benchmarks/openmp_teams.py``). Linux only (the runtime is found in
    the process's memory maps)."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return False
    libraries = {line.split()[-1] for line in lines if any(name in line for name in OPENMP_RUNTIMES)}
    for library in sorted(libraries):
        with contextlib.suppress(OSError, AttributeError):
            if ctypes.CDLL(library).omp_pause_resource_all(OMP_PAUSE_HARD) == 0:
                return True
    return False


def _affinity() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


@dataclass
class _Sample:
    busy: float  # seconds the process's cores were busy, by anyone
    total: float  # seconds they were there (busy or idle)
    own: float  # seconds of CPU this process used


class CoreWatch:
    """How many of this process's cores other processes leave free, between one :meth:`free` and
    the next (the first, against the moment the watch was made)."""

    def __init__(self, stat: Path = PROC_STAT):
        self.stat = stat
        self.cores = _affinity()
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._sample()

    def _sample(self) -> _Sample | None:
        try:
            lines = self.stat.read_text().splitlines()
        except OSError:
            return None
        busy = total = 0.0
        for line in lines:
            name, *fields = line.split()
            if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in self.cores):
                continue
            ticks = [int(value) for value in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
        times = os.times()
        return _Sample(busy / self.tick, total / self.tick, times.user + times.system)

    def free(self) -> float | None:
        """The cores others left free since the last call, in cores (None: nothing to read, or
        too short a time since)."""
        now, last = self._sample(), self.last
        if now is None or last is None or now.total - last.total <= 0:
            return None
        self.last = now
        others = max(0.0, (now.busy - last.busy) - (now.own - last.own))
        share = others / (now.total - last.total)  # of the cores' time: what others kept busy
        return len(self.cores) * (1.0 - share)

    def threads(self, limit: int) -> int | None:
        """How many threads run without waiting on a core: the free cores, rounded, from 1 to
        ``limit`` (None: not measured)."""
        free = self.free()
        return None if free is None else max(1, min(limit, round(free)))
