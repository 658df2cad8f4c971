"""Linear layers whose matmuls keep 16-byte aligned rows on CUDA.

cuBLAS runs its fast Hopper kernels only when every row of a bf16 operand spans a multiple
of 16 bytes (8 values). The ``seed`` preset's width, n_embd 1028, does not: on an H200 a
(2048×1028) @ (1028×4112) bf16 product ran at 154 TFLOP/s, against 290 at width 1032 and
302 at 1024 (``tools/gpu_profile.py``, reports/reference/gpu/). So on CUDA :func:`linear`
pads a width that is not a multiple of 8 with zero columns for the call (the input's and
the weight's inner width, the weight's and the bias's outer one) and slices the output
back: zeros add nothing, the result and the gradients are the same. 16 bytes are 8 bf16
values but 4 fp32 ones, so in fp32 n_embd 1028 needs no padding. On the CPU nothing is
padded (MKL has no such cliff); ``align=N`` pads to multiples of N values anywhere (tests), and
``pad_on_cuda=False`` (a :class:`Linear`'s attribute, see ``Transformer.set_padding``) pads nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ALIGN_BYTES = 16


def linear(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, align: int | None = None, pad_on_cuda: bool = True
) -> Tensor:
    """``F.linear(x, weight, bias)`` (weight (out, in)); on CUDA with widths padded to 16-byte rows.

    ``align``: pad the widths to multiples of this many values (default: 16 bytes of the
    compute dtype on CUDA, no padding on the CPU); ``pad_on_cuda=False``: no padding on CUDA either.
    """
    if align is None and not (x.is_cuda and pad_on_cuda):  # nothing to pad: the plain call (decoding makes many)
        return F.linear(x, weight, bias)
    autocast = torch.is_autocast_enabled(x.device.type)
    dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
    if align is None:
        align = ALIGN_BYTES // dtype.itemsize
    pad_out, pad_in = -weight.shape[0] % align, -weight.shape[1] % align
    if not (pad_out or pad_in):
        return F.linear(x, weight, bias)
    if autocast:  # cast first: padding the fp32 weight would copy it twice
        x, weight, bias = x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
    padded = F.linear(
        F.pad(x, (0, pad_in)), F.pad(weight, (0, pad_in, 0, pad_out)), None if bias is None else F.pad(bias, (0, pad_out))
    )
    return padded[..., : weight.shape[0]]


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose forward is :func:`linear`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad_on_cuda = True  # False: the plain call on CUDA too (to time both)

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, pad_on_cuda=self.pad_on_cuda)
