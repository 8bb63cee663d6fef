"""Window attention of the Video Swin backbone: one function, `window_attention`, that picks the kernel.

`softmax(q k^T / sqrt(d) + bias + shift_pattern) v`, where `bias` is the relative-position bias (a parameter:
it needs a gradient when training) and `shift_pattern` the constant shift mask of a group of windows.

On CUDA (and on the CPU without autograd) this is PyTorch's `scaled_dot_product_attention`. On the CPU with
autograd, PyTorch's fused kernels give an additive mask no gradient, so autograd falls back to the unfused
formula and keeps every `[windows, heads, N, N]` probability matrix for the backward pass: 600 MB of the
930 MB the backbone kept in a 160x288 training step on this project's 2-core test machine. There, the
`_AttentionWithMaskGradient` Function below runs the fused kernel forward and recomputes the probabilities in
cache-sized chunks in the backward pass: first-stage attention forward 0.18 -> 0.05 s, backward
0.19 -> 0.13 s; training-step peak memory 3.82 -> 2.81 GiB (160x288) and 7.70 -> 4.63 GiB (320x427) at the
same step time (docs/PERFORMANCE.md). It was measured on the CPU only, so it runs on the CPU only.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

ATTENTION_CHUNK_BYTES = 8 * 2 ** 20  # attention probabilities recomputed at a time in the backward pass


def _windows(mask, part):
    """The rows of an additive mask for the windows `part`; a mask of one row serves all of them."""
    return mask if mask.dim() < 4 or mask.shape[0] == 1 else mask[part]


class _AttentionWithMaskGradient(torch.autograd.Function):
    """softmax(q k^T / sqrt(d) + attn_mask + constant) v with gradients for q, k, v and the additive mask; the
    constant mask (e.g. a shift-mask pattern) gets none.

    PyTorch's CPU kernels give no mask gradient, so autograd would run the unfused formula and keep its
    [windows, heads, N, N] probabilities for the backward pass. Here the forward pass runs the fused kernel and
    keeps only q, k, v, the output and the two masks; the backward pass recomputes the probabilities a few
    windows at a time (small enough to stay in the CPU cache)."""

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, constant):
        mask = attn_mask.detach().contiguous()
        # (detached: with inputs that require a gradient the dispatcher would pick the unfused kernel)
        out = F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(),
                                             attn_mask=mask if constant is None else mask + constant)
        ctx.save_for_backward(q, k, v, mask, constant, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, mask, constant, out = ctx.saved_tensors
        windows, heads, n, _ = q.shape
        scale = q.shape[-1] ** -0.5
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        grad_mask = torch.zeros_like(mask) if ctx.needs_input_grad[3] else None
        reduce = [dim for dim in (0, 1) if mask.shape[dim] == 1]  # the mask's broadcast dimensions
        delta = (grad_out * out).sum(-1, keepdim=True)  # rowsum(dP * P) of the softmax backward
        chunk = max(1, ATTENTION_CHUNK_BYTES // (heads * n * n * q.element_size()))
        for start in range(0, windows, chunk):
            part = slice(start, start + chunk)
            probs = torch.matmul(q[part] * scale, k[part].transpose(-2, -1))
            probs.add_(_windows(mask, part))
            if constant is not None:
                probs.add_(_windows(constant, part))
            torch.softmax(probs, -1, out=probs)
            torch.matmul(probs.transpose(-2, -1), grad_out[part], out=grad_v[part])
            grad_logits = torch.matmul(grad_out[part], v[part].transpose(-2, -1)).sub_(delta[part]).mul_(probs)
            torch.matmul(grad_logits, k[part], out=grad_q[part]).mul_(scale)
            torch.matmul(grad_logits.transpose(-2, -1), q[part], out=grad_k[part]).mul_(scale)
            if grad_mask is not None:
                grad_logits = grad_logits.sum(reduce, keepdim=True) if reduce else grad_logits
                if mask.shape[0] == 1:
                    grad_mask += grad_logits
                else:
                    grad_mask[part] = grad_logits
        return grad_q, grad_k, grad_v, grad_mask, None


def attention_with_mask_gradient(q, k, v, attn_mask, constant=None):
    """`F.scaled_dot_product_attention(q, k, v, attn_mask + constant)` on the CPU when the 4-D additive mask
    `attn_mask` [windows or 1, heads or 1, N, N] needs a gradient; q, k, v: [windows, heads, N, head_dim]."""
    return _AttentionWithMaskGradient.apply(q, k, v, attn_mask, constant)




def window_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, shift_pattern: Optional[Tensor] = None,
                     dropout_p: float = 0.0) -> Tensor:
    """Attention of `[windows, heads, N, head_dim]` q, k, v under the additive `bias` `[1, heads, N, N]` plus,
    for shifted windows, the constant `shift_pattern` `[N, N]` (one pattern for all these windows)."""
    if q.device.type == 'cpu' and bias.requires_grad and torch.is_grad_enabled() and dropout_p == 0:
        return attention_with_mask_gradient(q, k, v, bias, shift_pattern)
    mask = bias if shift_pattern is None else bias + shift_pattern
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
