"""Small shared helpers: the CPU allocator setting and the run's autocast."""
import ctypes
import ctypes.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config import Config
from utils import autocast

REPO = Path(__file__).resolve().parents[1]

# A large tensor is mmapped by default (glibc's mallinfo2().hblkhd counts mmapped bytes); once freed memory is
# kept in the process, it comes from the heap and stays there when freed.
MMAPPED_BYTES = f'''
import ctypes, ctypes.util, sys
sys.path.insert(0, {str(REPO)!r})
import torch
from utils import keep_freed_memory_in_process
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks',
                 'keepcost')]
libc = ctypes.CDLL(ctypes.util.find_library('c'))
libc.mallinfo2.restype = Mallinfo2
if sys.argv[1] == 'keep':
    assert keep_freed_memory_in_process()
before = libc.mallinfo2().hblkhd
tensor = torch.ones(16 * 2 ** 20)  # 64 MB
print(libc.mallinfo2().hblkhd - before)
'''


def has_mallinfo2():
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library('c')), 'mallinfo2')
    except OSError:
        return False


@pytest.mark.skipif(not has_mallinfo2(), reason='needs glibc >= 2.33 (mallinfo2)')
def test_keeping_freed_memory_serves_large_tensors_from_the_heap():
    def mmapped(mode):
        done = subprocess.run([sys.executable, '-c', MMAPPED_BYTES, mode], capture_output=True, text=True, check=True)
        return int(done.stdout)

    assert mmapped('default') >= 64 * 2 ** 20
    assert mmapped('keep') == 0


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
