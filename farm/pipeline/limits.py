"""Resource limits of the farm's processes: one upload must not take the host.

Each worker and each encoder process runs under ``transcoder.worker_memory_limit`` (RLIMIT_AS,
its address space: an allocation past it fails, the job fails with the reason, the process
lives on) and ``transcoder.cpu_time_limit_per_job`` (RLIMIT_CPU). A worker serves many jobs, so
its CPU limit is a budget per job: the soft limit is moved to "spent so far + budget" when a
job starts and lifted when it ends; the kernel's SIGXCPU at the limit cancels the run. An
encoder lives for one job, so the budget is its whole life; SIGXCPU ends it and the decoder
reports the limit. Only soft limits move: an unprivileged process cannot raise a hard limit it
has lowered, and a worker must be able to give the next job a full budget.
"""

from __future__ import annotations

import resource
import signal

EXIT_CPU_LIMIT = -signal.SIGXCPU  # Popen.returncode of a process the kernel stopped at RLIMIT_CPU


def set_memory_limit(limit_bytes: int) -> None:
    """Cap this process's address space (0: leave it); never above the hard limit it has."""
    if limit_bytes <= 0:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def cpu_seconds_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_cpu_budget(seconds: float) -> None:
    """From now on this process may spend ``seconds`` more CPU (0: no limit) before SIGXCPU."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if seconds <= 0:
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        return
    # RLIMIT_CPU counts whole seconds; round up, and never past the hard limit.
    soft = int(cpu_seconds_used() + seconds + 0.999)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def end_cpu_budget() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))


def memory_error_reason(exc: BaseException, limit_bytes: int) -> str:
    limit = f" of {limit_bytes / 2**30:.1f} GiB" if limit_bytes > 0 else ""
    return f"memory limit{limit} reached: {type(exc).__name__}: {exc}".rstrip(": ")


def near_memory_limit(limit_bytes: int) -> bool:
    """Whether this process's address space came close to ``limit_bytes``: libx264 and FFmpeg
    report a failed allocation as a generic library error, not as ENOMEM, so a failure there
    is put down to the limit when the peak came within an eighth of it (64 MiB at least)."""
    if limit_bytes <= 0:
        return False
    try:
        with open("/proc/self/status") as status:
            peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmPeak:"))
    except (OSError, StopIteration, ValueError):
        return False
    return peak_kib * 1024 >= limit_bytes - max(limit_bytes // 8, 64 * 2**20)
