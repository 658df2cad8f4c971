"""Training steps as CUDA graphs: one launch per optimizer step instead of thousands.

A small model's training step on a GPU is a few thousand kernels of microseconds each.
Launched one by one from Python, they leave the GPU waiting on the host. A CUDA graph
records the whole step once (forward, backward, gradient clipping, optimizer) and replays
it with one launch: PyTorch's whole-network capture
(https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs).

What a graph needs, and where moelab gives it:

- nothing inside the step reads the GPU back: the MoE layer counts expert slots with a
  scatter-add, and the grouped expert kernel lays out its blocks on the device
  (:mod:`moelab.nn.moe.experts`);
- fixed shapes and addresses: one graph per batch shape, captured on that shape's first
  step (the window schedule has a few shapes; the previous graph is freed), with batches
  copied into the graph's input buffers;
- a learning rate the graph reads from memory: a tensor, filled before each replay;
- optimizer state that exists before the capture: the run's first step is eager;
- a step whose loss is not finite changes nothing: the graph hands AdamW a ``found_inf``
  flag (as a gradient scaler does), so the weights stay those of the last good step.

:func:`graph_blocker` says why a run cannot use graphs (``None`` when it can); a capture
that fails anyway raises :class:`CaptureError` (the Trainer then trains eagerly). Dropout
and router noise come from the same generator as in eager steps (the capture's warm-up
passes give back what they drew), and a graphed run is reproducible from its seed.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from moelab.config.model import ModelConfig
from moelab.config.train import TrainConfig
from moelab.train.step import NonFiniteLoss, StepResult, TrainStep

WARMUP_PASSES = 3  # forward + backward passes before a capture (cuBLAS handles, autograd's lazy setup)


class CaptureError(RuntimeError):
    """A training step could not be captured as a CUDA graph."""


def graph_blocker(
    model: ModelConfig, train: TrainConfig, device: torch.device, precision: str, optimizer, distributed: bool
) -> str | None:
    """Why this run's training steps cannot be captured as CUDA graphs, or None if they can."""
    reasons = [
        (device.type != "cuda", "not on CUDA"),
        (not train.cuda_graphs, "cuda_graphs=false"),
        (train.compile, "torch.compile is on"),
        (distributed, "DDP synchronizes gradients between ranks outside the graph"),
        (train.grad_accum_steps != 1, "gradient accumulation"),
        (not isinstance(optimizer, torch.optim.AdamW) or not optimizer.defaults.get("fused"),
         "moelab's graphs take fused AdamW (Muon takes its learning rate as a number)"),
        (model.is_moe and model.capacity_factor is not None, "capacity reads the kept slots on the host"),
        (model.is_moe and not hasattr(F, "grouped_mm"), "this torch has no grouped_mm"),
        (model.is_moe and precision != "bf16", "fp32 experts run one matmul per expert, which reads the counts on the host"),
    ]  # fmt: skip
    return next((why for blocked, why in reasons if blocked), None)


class GraphedStep:
    """The steps of a :class:`~moelab.train.step.TrainStep` on one batch shape, replayed from a CUDA graph.

    The graph holds the step's forward and backward pass, clipping and the optimizer step; the
    balance-bias update runs after each replay, outside the graph (``step`` calls it).

    ``step(x, y, lr)`` trains on the CPU batch (x, y) at learning rate ``lr`` and returns
    the loss parts (loss, ce, aux, z: a (4,) float tensor on the CPU), the gradient norm
    before clipping, and the routing records (on the device, overwritten by the next step).
    """

    def __init__(self, train_step: TrainStep):
        self.train_step = train_step
        self.model, self.optimizer = train_step.model, train_step.optimizer
        self.lr = torch.zeros((), device=train_step.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.shape: tuple[int, ...] | None = None

    def step(self, x: Tensor, y: Tensor, lr: float) -> StepResult:
        """One replay on the CPU batch (x, y) at learning rate ``lr`` (raises :class:`NonFiniteLoss`
        after a step whose loss was not finite: the graph's optimizer left the weights as they were)."""
        if tuple(x.shape) != self.shape:
            try:
                self._capture(x, y)
            except RuntimeError as err:
                self.graph = self.shape = None
                self.optimizer.zero_grad(set_to_none=True)  # what a failed capture left in .grad is not a gradient
                raise CaptureError(str(err)) from err
        self.x.copy_(x.pin_memory(), non_blocking=True)
        self.y.copy_(y.pin_memory(), non_blocking=True)
        self.lr.fill_(lr)
        self.graph.replay()
        host = torch.cat([self.parts, self.grad_norm.float().view(1)]).cpu()  # the step's one read back
        if not torch.isfinite(host[0]):
            raise NonFiniteLoss(host[0].item())
        self.train_step.update_balance_biases()
        return StepResult(host[:4], host[4].item(), self.routing)

    def _forward_backward(self) -> tuple[Tensor, list | None]:
        return self.train_step.forward_backward(self.x, self.y, record=True, weight_cache=False)

    def _capture(self, x: Tensor, y: Tensor) -> None:
        # the previous shape's graph, its outputs and the gradients it wrote go first (their memory too)
        self.graph = self.shape = self.parts = self.routing = self.grad_norm = None
        self.optimizer.zero_grad(set_to_none=True)
        self.x, self.y = x.to(self.lr.device).clone(), y.to(self.lr.device).clone()
        # warm-up passes leave no trace: buffers (the bias counts) and the random stream are restored
        buffers = [(b, b.clone()) for b in self.model.buffers()]
        rng = torch.cuda.get_rng_state(self.lr.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                self._forward_backward()
                self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.current_stream().wait_stream(side)
        for buffer, saved in buffers:
            buffer.copy_(saved)
        torch.cuda.set_rng_state(rng, self.lr.device)
        graph = torch.cuda.CUDAGraph()
        with self._graph_optimizer(), torch.cuda.graph(graph):  # gradients are allocated and written by the graph
            self.parts, self.routing = self._forward_backward()
            self.grad_norm = self.train_step.clip()
            self.optimizer.found_inf = (~torch.isfinite(self.parts[0])).float()  # a bad step changes nothing
            self.optimizer.step()
        self.graph, self.shape = graph, tuple(x.shape)

    @contextlib.contextmanager
    def _graph_optimizer(self):
        """During the capture only: the groups read ``self.lr`` (a tensor) and allow capture.

        Outside it the optimizer keeps plain numbers and no ``found_inf``, so eager steps and
        its checkpoints are as without graphs.
        """
        saved = [(group["lr"], group["capturable"]) for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"], group["capturable"] = self.lr, True
        try:
            yield
        finally:
            for group, (lr, capturable) in zip(self.optimizer.param_groups, saved):
                group["lr"], group["capturable"] = lr, capturable
            self.optimizer.__dict__.pop("found_inf", None)
