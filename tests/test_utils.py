"""Small shared helpers: the CPU allocator setting and the run's autocast."""
import subprocess
import sys

import pytest
import torch

from config import Config
from tests.helpers import REPO
from utils import autocast

# Where glibc serves a 64 MiB tensor from: `hblkhd` of mallinfo2() counts the bytes of separately mapped blocks
# (which glibc unmaps when they are freed, so the next pass page-faults them in again); with freed memory kept,
# every allocation comes from the heap instead.
MAPPED_BYTES = f'''
import ctypes, ctypes.util, sys
sys.path.insert(0, {str(REPO)!r})
import torch
from engine.cpu_heap import keep_freed_memory_in_process

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks',
                 'keepcost')]

libc = ctypes.CDLL(ctypes.util.find_library('c'))
if not hasattr(libc, 'mallinfo2') or (sys.argv[1] == 'keep' and not keep_freed_memory_in_process()):
    print('unsupported')
    sys.exit()
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblkhd
tensor = torch.ones(16 * 2 ** 20)
print(libc.mallinfo2().hblkhd - before)
'''


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_keeping_freed_memory_serves_large_tensors_from_the_heap():
    def mapped_bytes(mode):
        done = subprocess.run([sys.executable, '-c', MAPPED_BYTES, mode], capture_output=True, text=True, check=True)
        return done.stdout.strip()

    kept = mapped_bytes('keep')
    if kept == 'unsupported':
        pytest.skip('the C library is not glibc 2.33 or newer')
    assert int(mapped_bytes('default')) >= 64 * 2 ** 20  # glibc's default: a mapping of its own
    assert int(kept) == 0


def matmul_dtype(config, training):
    with autocast(config, torch.device('cpu'), training=training):
        return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype


def test_autocast_on_the_cpu_is_bfloat16_only_when_asked():
    assert matmul_dtype(Config(device='cpu'), training=True) == torch.float32  # enable_amp's float16: CUDA only
    bfloat16 = Config(device='cpu', amp_dtype='bfloat16')
    assert matmul_dtype(bfloat16, training=True) == torch.bfloat16
    assert matmul_dtype(bfloat16, training=False) == torch.bfloat16
    assert matmul_dtype(Config(device='cpu', amp_dtype='bfloat16', enable_amp=False), training=True) == torch.float32


def test_amp_dtype_is_checked():
    with pytest.raises(ValueError, match="amp_dtype: 'fp8'"):
        Config(amp_dtype='fp8')
