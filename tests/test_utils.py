"""Small shared helpers: the CPU allocator setting and the run's autocast."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config import Config
from utils import autocast

REPO = Path(__file__).resolve().parents[1]

# Page faults of a forward-pass-like sequence of large tensors, run again and again. By default glibc maps each
# large tensor afresh and unmaps it when freed (about 147,000 faults of 4 KiB per pass here); with freed memory
# kept, later passes reuse the memory of the first ones.
REFAULTS = f'''
import resource, sys
sys.path.insert(0, {str(REPO)!r})
import torch
from utils import keep_freed_memory_in_process
if sys.argv[1] == 'keep' and not keep_freed_memory_in_process():
    print('unsupported')
    sys.exit()

def forward():
    x = torch.ones(4 * 2 ** 20)
    for _ in range(4):
        hidden = torch.ones(16 * 2 ** 20) * 2
        x = x + hidden[:4 * 2 ** 20]
        del hidden
    return x

faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    forward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(faults[7:]))  # once the heap has grown to what a pass needs (it grows for a few passes)
'''


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_keeping_freed_memory_spares_the_page_faults_of_reallocating():
    def refaults(mode):
        done = subprocess.run([sys.executable, '-c', REFAULTS, mode], capture_output=True, text=True, check=True)
        return done.stdout.strip()

    kept = refaults('keep')
    if kept == 'unsupported':
        pytest.skip('the C library is not glibc')
    assert int(refaults('default')) >= 16000
    assert int(kept) < 1000


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
