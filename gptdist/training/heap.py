"""Keep freed host memory for reuse on CPU runs (glibc only).

glibc serves every block over 32 MiB with its own mmap and hands it back to the kernel
on free. A CPU training step allocates and frees the same few large tensors (logits
and their gradients: hundreds of MiB) every time, so each step page-faults all of them
in again and the kernel zeroes them: measured at 20% of a step on a 2-core machine
(docs/performance.md). With mmap off and a high trim threshold, freed blocks stay in
the heap and the next step reuses them.
"""

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Switch glibc's malloc to reuse large blocks; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory() -> None:
    """Hand the heap's freed blocks back to the kernel now (glibc; nothing elsewhere): before measuring
    what the next piece of work adds."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass
