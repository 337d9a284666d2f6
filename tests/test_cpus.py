"""The cores a job may use on a shared machine (its affinity and CPU quota), and those other
processes leave it free, which training's threads follow."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genai_pipeline.cpus import CoreWatch, available_cores, cgroup_quota, release_openmp_team

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("files", "quota", "cores"),
    [
        ({}, None, AFFINITY),  # no cgroup to read
        ({"cpu.max": "max 100000\n"}, None, AFFINITY),  # v2, no limit
        ({"cpu.max": "150000 100000\n"}, 1.5, 1),  # a 1.5-core pod: one thread, not two throttled
        ({"cpu.max": "50000 100000\n"}, 0.5, 1),  # at least one
        ({"cpu.max": "6400000 100000\n"}, 64.0, AFFINITY),  # at most the cores it may run on
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None, AFFINITY),  # v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "100000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 1.0, 1),
        ({"cpu.max": "garbage"}, None, AFFINITY),
    ],
)
def test_the_cores_are_the_affinity_at_most_the_quota(
    tmp_path: Path, files: dict[str, str], quota: float | None, cores: int
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_quota(tmp_path) == quota
    assert available_cores(tmp_path) == cores


def _stat(path: Path, ticks: dict[int, tuple[int, int]]) -> None:
    """A /proc/stat of cores ``{cpu: (busy, idle)}`` in clock ticks."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{cpu} {busy} 0 0 {idle} 0 0 0 0 0 0" for cpu, (busy, idle) in ticks.items()]
    path.write_text("\n".join(lines) + "\n")


def test_the_free_cores_are_those_other_processes_leave_idle(tmp_path: Path) -> None:
    cores = sorted(os.sched_getaffinity(0))
    stat = tmp_path / "stat"
    before = {cpu: (1000, 1000) for cpu in cores} | {99: (0, 0)}
    # over 20 s: one core kept busy by someone else, the others idle (a core outside the
    # affinity, cpu99, is not this process's to count)
    after = {cpu: (3000, 1000) if cpu == cores[0] else (1000, 3000) for cpu in cores} | {99: (9000, 0)}
    _stat(stat, before)
    watch = CoreWatch(stat)
    _stat(stat, after)
    assert watch.free() == pytest.approx(len(cores) - 1, abs=0.05)
    assert watch.free() is None  # no time has passed since
    _stat(stat, before)
    watch = CoreWatch(stat)
    _stat(stat, after)
    assert watch.threads(len(cores)) == max(1, len(cores) - 1)
    assert CoreWatch(tmp_path / "missing").threads(4) is None


@pytest.mark.skipif(AFFINITY < 2, reason="a busy neighbour needs a core of its own")
def test_a_busy_neighbour_is_seen_as_a_core_less() -> None:
    watch = CoreWatch()
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.5)
        free = watch.free()
    finally:
        neighbour.kill()
        neighbour.wait()
    assert free is not None and free <= AFFINITY - 0.6


def test_training_threads_stay_within_the_affinity_and_come_back_after() -> None:
    # a process pinned to one core trains on one thread, where torch alone counts the host's
    script = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "import torch; torch.set_num_threads(8); from genai_pipeline.training import CpuThreads;"
        "threads = CpuThreads(torch.device('cpu')); print(torch.get_num_threads());"
        "threads.restore(); print(torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "8"]


@pytest.mark.skipif(sys.platform != "linux", reason="the runtime is found in /proc/self/maps")
def test_the_openmp_team_of_a_thread_that_ran_torch_is_released(tmp_path: Path) -> None:
    script = (
        "import torch\n"
        "from genai_pipeline.cpus import release_openmp_team\n"
        "torch.nn.functional.silu(torch.randn(4096, 64) @ torch.randn(64, 64))\n"
        "print(release_openmp_team())\n"
        "print(float((torch.ones(4096, 64) @ torch.ones(64, 64)).sum()))\n"  # a new team works
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", str(4096 * 64 * 64.0)]
    unrelated = tmp_path / "maps"
    unrelated.write_text("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/libc.so.6\n")
    assert not release_openmp_team(unrelated)  # no OpenMP runtime loaded: nothing to release
    assert not release_openmp_team(tmp_path / "missing")
