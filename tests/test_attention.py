"""The window attention's kernel choice and its CPU autograd Function (models/attention.py)."""
import pytest
import torch
import torch.nn.functional as F

from models import attention


@pytest.mark.parametrize('mask_shape', [(5, 3), (5, 1), (1, 3), (1, 1)])
@pytest.mark.parametrize('windows_per_chunk', [2, 5])
@pytest.mark.parametrize('shift_as_constant', [False, True])
def test_attention_with_mask_gradient_equals_scaled_dot_product_attention(monkeypatch, mask_shape,
                                                                          windows_per_chunk, shift_as_constant,
                                                                          device):
    """Outputs and all 4 gradients, with the mask broadcast over windows and/or heads, a shift mask added to it
    or passed as the constant, and the backward pass in chunks of 2 windows (the last one short) or in one. On
    CUDA, PyTorch's kernels give the mask a gradient (the window attention's path there): this checks it too."""
    monkeypatch.setattr(attention, 'ATTENTION_CHUNK_BYTES', windows_per_chunk * 3 * 16 * 16 * 4)
    torch.manual_seed(7)
    q, k, v = (torch.randn(5, 3, 16, 8).to(device).requires_grad_() for _ in range(3))
    bias = torch.randn(*mask_shape, 16, 16).to(device).requires_grad_()
    shift = torch.zeros(mask_shape[0], 1, 16, 16).masked_fill(torch.rand(mask_shape[0], 1, 16, 16) < 0.3, -100.0)
    shift = shift.to(device)
    gradient = torch.randn(5, 3, 16, 8).to(device)
    if shift_as_constant:
        ours = attention.attention_with_mask_gradient(q, k, v, bias, shift)
    else:
        ours = attention.attention_with_mask_gradient(q, k, v, bias + shift)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias + shift)
    for ours, expected in zip([ours, *torch.autograd.grad(ours, (q, k, v, bias), gradient)],
                              [expected, *torch.autograd.grad(expected, (q, k, v, bias), gradient)]):
        assert ours.shape == expected.shape
        assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_attention_with_mask_gradient_keeps_no_attention_probabilities():
    q, k, v = (torch.randn(4, 2, 64, 8, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 2, 64, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        attention.attention_with_mask_gradient(q, k, v, attn_mask=bias)
    assert (4, 2, 64, 64) not in saved
    assert saved  # (the hook saw what the backward keeps)


def test_window_attention_takes_the_function_only_on_the_cpu_with_a_bias_gradient():
    q, k, v = (torch.randn(4, 2, 16, 8) for _ in range(3))
    bias = torch.randn(1, 2, 16, 16, requires_grad=True)
    pattern = torch.zeros(16, 16).masked_fill(torch.rand(16, 16) < 0.3, -100.0)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias + pattern)
    out = attention.window_attention(q, k, v, bias, pattern)
    assert 'AttentionWithMaskGradient' in type(out.grad_fn).__name__
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # no gradient wanted: PyTorch's kernel
        assert torch.allclose(attention.window_attention(q, k, v, bias, pattern), expected, rtol=1e-5, atol=1e-6)
    out = attention.window_attention(q, k, v, bias, pattern, dropout_p=0.5)  # dropout: PyTorch's attention
    assert 'AttentionWithMaskGradient' not in type(out.grad_fn).__name__
