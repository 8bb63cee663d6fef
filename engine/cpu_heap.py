"""A CPU speed setting of the whole process, made by entry points only (main.py through engine/launch.py,
inference.py, demo.py, the benchmarks).
"""
import ctypes
import ctypes.util


def keep_freed_memory_in_process() -> bool:
    """On Linux with glibc, serve every allocation from the heap and keep freed memory there for reuse.

    By default glibc maps each large tensor afresh and unmaps it when freed, and returns the top of the heap to
    the system, so every forward and backward pass page-faults its activations in again: on this project's
    test machine a training step took 5.2 s with glibc's defaults and 3.6 s with this (450,000 -> 6,000 page
    faults per step). Returns whether the setting took (False elsewhere, e.g. with another C library, where
    nothing changes). The process keeps its peak memory instead of giving it back between steps.
    """
    name = ctypes.util.find_library('c')
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 2 ** 31 - 1) == 1
