"""One training step: the forward and backward passes, clipping, the optimizer, the bias update.

The Trainer, the CUDA-graph capture, the forecaster and the benchmark all train through
:class:`TrainStep`, so clipping, precision, accumulation and the balance-bias update are
written once. A step over ``k`` micro-batches divides each loss by ``k`` before its
backward pass (the gradients add up to the mean's), clips the gradient norm to
``grad_clip`` (0: no clipping, the norm is still measured), steps the optimizer, clears
the gradients, and then moves the routers' selection biases (``balance="bias"``, after the
optimizer as that method prescribes; a no-op for the other balance choices).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from moelab.train.precision import autocast


class NonFiniteLoss(ArithmeticError):
    """The loss of a step was NaN or infinite; the optimizer did not step."""

    def __init__(self, loss: float) -> None:
        super().__init__(f"the loss became {loss}")
        self.loss = loss


@dataclass
class StepResult:
    parts: Tensor  # (4,) on the CPU: loss, ce_loss, aux_loss, z_loss; means over micro-batches (and ranks)
    grad_norm: float  # before clipping
    routing: list | None  # the last micro-batch's routing records, when asked for


class TrainStep:
    """Optimizer steps of ``model`` (a Transformer) with ``optimizer``.

    ``forward``: the module the passes call (a DDP or compiled wrapper of ``model``;
    default ``model`` itself). ``reduce`` sums a tensor over ranks under DDP (the logged
    losses and the bias counts become means over all ranks); None on one process.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        grad_clip: float = 0.0,
        precision: str = "fp32",
        forward: torch.nn.Module | None = None,
        reduce: Callable[[Tensor], Tensor] | None = None,
        world_size: int = 1,
    ) -> None:
        self.model, self.optimizer, self.precision = model, optimizer, precision
        self.forward = forward if forward is not None else model
        self.max_norm = grad_clip if grad_clip > 0 else float("inf")
        self.reduce, self.world_size = reduce, world_size
        self.device = next(model.parameters()).device

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def forward_backward(
        self,
        x: Tensor,
        y: Tensor,
        *,
        accumulate: int = 1,
        record: bool = False,
        module: torch.nn.Module | None = None,
        weight_cache: bool = True,
    ) -> tuple[Tensor, list | None]:
        """One micro-batch: the loss parts (detached, float, on the device) and, if ``record``, the routing."""
        with autocast(self.precision, self.device, weight_cache):
            out = (module or self.forward)(x, y, record_routing=record)
        (out.loss / accumulate).backward()  # the gradients of k micro-batches add up to their mean's
        return torch.stack([out.loss, out.ce_loss, out.aux_loss, out.z_loss]).detach().float(), out.routing

    def clip(self) -> Tensor:
        """Clip the gradients to ``grad_clip``; the norm before clipping (a tensor on the device)."""
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm)

    def update_balance_biases(self) -> None:
        self.model.update_balance_biases(self.reduce)

    def __call__(
        self,
        batches: Iterable[tuple[Tensor, Tensor]],
        lr: float | None = None,
        *,
        accumulate: int = 1,
        record: bool = False,
        no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
        record_module: torch.nn.Module | None = None,
    ) -> StepResult:
        """One step over ``accumulate`` micro-batches drawn from ``batches``.

        ``record``: return the last micro-batch's routing (run through ``record_module``
        when given: compiled modules cannot return it). ``no_sync``: DDP's context that skips
        the gradient reduction, entered for every micro-batch but the last.
        Raises :class:`NonFiniteLoss` before the optimizer steps if the loss is NaN or infinite.
        """
        if lr is not None:
            self.set_lr(lr)
        parts, routing = self._accumulate(iter(batches), accumulate, record, no_sync, record_module)
        if not torch.isfinite(parts[0]):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(parts[0].item())
        grad_norm = self.clip().item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.update_balance_biases()
        return StepResult(parts, grad_norm, routing)

    def _accumulate(
        self, batches: Iterator, accumulate: int, record: bool, no_sync, record_module
    ) -> tuple[Tensor, list | None]:
        parts, routing = torch.zeros(4), None
        for micro in range(accumulate):
            x, y = next(batches)
            last = micro == accumulate - 1
            sync = no_sync() if no_sync is not None and not last else contextlib.nullcontext()
            with sync:
                micro_parts, micro_routing = self.forward_backward(
                    x, y, accumulate=accumulate, record=record and last,
                    module=record_module if record and last else None,
                )  # fmt: skip
            parts += micro_parts.cpu()
            routing = micro_routing if record and last else routing
        parts /= accumulate
        if self.reduce is not None:  # the logged losses are means over all ranks
            parts = (self.reduce(parts) / self.world_size).float()
        return parts, routing
