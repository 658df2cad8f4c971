"""Configuration: ModelConfig and TrainConfig (the named presets are in :mod:`moelab.config.presets`).

Names follow the seed repository where it had one (``context_window``,
``current_context_window``, ``context_window_step``, ``num_embeds`` as an alias of
``n_embd``). Every config validates itself on construction and raises a
``ValueError`` that names the field and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import InitVar, asdict, dataclass
from typing import Any, ClassVar

POS_ENCODINGS = ("learned", "sinusoidal", "rope")
BATCH_KEEPS = ("sequences", "tokens")
PRECISIONS = ("auto", "fp32", "bf16")
GATES = ("softmax", "sigmoid")  # ModelConfig.gate: how router logits become scores (see moelab.nn.moe.layer)
BALANCES = ("aux_loss", "bias", "none")  # ModelConfig.balance: how the expert load is balanced
BUDGET_FIELDS = ("max_steps", "max_tokens", "max_minutes")  # TrainConfig: training ends at the first reached
ACTIVATIONS = ("gelu", "relu2")  # the feed-forward nonlinearity; relu2 is relu(x)² (moelab.nn.moe.experts)
OPTIMIZERS = ("adamw", "muon")  # see moelab.train.optim


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field_name}: {message}")


def _check_types(config: Any) -> None:
    """Each field's value has its annotated type (ints are accepted where floats are)."""
    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), str(f.type)
        if value is None and kind.endswith("| None"):
            continue
        base = kind.removesuffix(" | None")
        if base == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif base == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif base == "bool":
            ok = isinstance(value, bool)
        elif base == "str":
            ok = isinstance(value, str)
        else:
            continue
        wanted = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string"}[base]
        _check(ok, f.name, f"must be {wanted}{' or None' if kind != base else ''}, got {value!r}")


def _check_known_fields(cls: type, values: dict[str, Any], extra: set[str] = frozenset()) -> None:
    """A dict of config values names only fields of ``cls`` (plus ``extra`` aliases)."""
    known = {f.name for f in dataclasses.fields(cls)} | set(extra)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known fields: {', '.join(sorted(known))}"
        )


def _positive_int(value: Any, field_name: str) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        field_name,
        f"must be a positive integer, got {value!r}",
    )


@dataclass
class ModelConfig:
    """Architecture of a byte-level GPT-style transformer with a sparse MoE feed-forward.

    ``n_experts`` routed experts (``top_k`` chosen per token by a noisy top-k router)
    plus ``n_common_experts`` always-on experts form each block's feed-forward.
    ``n_experts=0`` is the dense model: the feed-forward is then the common experts
    alone (at least one), through the same code.

    Routing choices (:mod:`moelab.nn.moe.layer` says how each works): ``gate`` turns router
    logits into scores (``softmax`` over the experts, or ``sigmoid`` of each);
    ``balance`` is ``aux_loss`` (the load-balancing loss, weighted by ``aux_loss_coef``),
    ``bias`` (auxiliary-loss-free: a per-expert selection bias moved by
    ``bias_update_rate`` after every optimizer step) or ``none``;
    ``expert_granularity`` m splits each routed expert into m experts m times narrower,
    of which the router picks ``top_k * m`` (:attr:`routed_experts`, :attr:`routed_top_k`).
    Recipe options seen to help small models (modded-nanogpt, nanochat), off by default:
    ``activation="relu2"``, ``qk_norm``, ``logit_softcap`` and ``tie_weights=False``
    (and TrainConfig's ``optimizer="muon"``).
    """

    vocab_size: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_embd: int = 128
    context_window: int = 64
    n_experts: int = 8
    top_k: int = 2
    n_common_experts: int = 0
    expert_hidden: int | None = None  # hidden width of one expert; None = 4 * n_embd
    dropout: float = 0.0
    pos_encoding: str = "learned"  # one of POS_ENCODINGS
    rope_base: float = 10000.0
    router_noise: bool = True  # noisy top-k gating (Shazeer et al. 2017), training only
    aux_loss_coef: float = 0.01  # load-balancing loss weight (Switch / Mixtral form)
    z_loss_coef: float = 0.001  # router z-loss weight (ST-MoE)
    capacity_factor: float | None = None  # None = dropless; else tokens per expert are capped
    gate: str = "softmax"  # one of GATES: softmax over experts (Mixtral) or sigmoid per expert (DeepSeek-V3)
    balance: str = "aux_loss"  # one of BALANCES: aux loss (Switch), selection bias (arXiv 2408.15664) or none
    bias_update_rate: float = 1e-3  # γ of balance="bias": the bias step per optimizer step
    expert_granularity: int = 1  # m: each routed expert split into m of width expert_hidden / m (DeepSeekMoE)
    tie_weights: bool = True  # share the token embedding with the output projection
    bias: bool = True  # biases in Linear layers and LayerNorm
    activation: str = "gelu"  # one of ACTIVATIONS, in every feed-forward (common and routed experts)
    qk_norm: bool = False  # RMS-normalize queries and keys per head (learned gain) before RoPE and attention
    logit_softcap: float | None = None  # logits = c · tanh(logits / c) (Gemma 2); None = no cap
    num_embeds: InitVar[int | None] = None  # the seed's name for n_embd

    def __post_init__(self, num_embeds: int | None) -> None:
        if num_embeds is not None:
            default = ModelConfig.__dataclass_fields__["n_embd"].default
            _check(
                self.n_embd in (default, num_embeds),
                "num_embeds",
                f"is an alias of n_embd; got num_embeds={num_embeds!r} and n_embd={self.n_embd!r}, give only one",
            )
            self.n_embd = num_embeds
        if self.expert_hidden is None:
            self.expert_hidden = 4 * self.n_embd
        self.validate()

    def validate(self) -> None:
        _check_types(self)
        for name in ("vocab_size", "n_layers", "n_heads", "n_embd", "context_window", "expert_hidden"):
            _positive_int(getattr(self, name), name)
        _check(
            self.n_embd % self.n_heads == 0,
            "n_embd",
            f"must be divisible by n_heads={self.n_heads}, got {self.n_embd}",
        )
        _check(
            self.pos_encoding in POS_ENCODINGS,
            "pos_encoding",
            f"must be one of {', '.join(POS_ENCODINGS)}; got {self.pos_encoding!r}",
        )
        if self.pos_encoding == "rope":
            _check(
                self.head_dim % 2 == 0,
                "pos_encoding",
                f"'rope' needs an even head size (n_embd / n_heads), got {self.head_dim}; "
                "use 'learned' or 'sinusoidal', or change n_embd / n_heads",
            )
        for name in ("n_experts", "n_common_experts"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                name,
                f"must be an integer >= 0, got {value!r}",
            )
        if self.n_experts == 0:
            _check(
                self.n_common_experts >= 1,
                "n_common_experts",
                "must be >= 1 when n_experts=0 (the dense model's feed-forward is its common experts)",
            )
        else:
            _check(
                isinstance(self.top_k, int) and 1 <= self.top_k <= self.n_experts,
                "top_k",
                f"must be an integer in 1..n_experts={self.n_experts}, got {self.top_k!r}",
            )
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout!r}")
        _check(self.rope_base > 0, "rope_base", f"must be > 0, got {self.rope_base!r}")
        for name in ("aux_loss_coef", "z_loss_coef"):
            _check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)!r}")
        if self.capacity_factor is not None:
            _check(
                self.capacity_factor > 0,
                "capacity_factor",
                f"must be > 0 or None (dropless), got {self.capacity_factor!r}",
            )
        _check(
            self.activation in ACTIVATIONS,
            "activation",
            f"must be one of {', '.join(ACTIVATIONS)}; got {self.activation!r}",
        )
        if self.logit_softcap is not None:
            _check(
                0 < self.logit_softcap < math.inf,
                "logit_softcap",
                f"must be a finite number > 0 (the cap c of c · tanh(logits / c)) or None, got {self.logit_softcap!r}",
            )
        self._validate_routing()

    def _validate_routing(self) -> None:
        """The routing choices: gate, balance, bias_update_rate, expert_granularity."""
        for name, allowed in (("gate", GATES), ("balance", BALANCES)):
            value = getattr(self, name)
            _check(value in allowed, name, f"must be one of {', '.join(allowed)}; got {value!r}")
        _check(self.bias_update_rate >= 0, "bias_update_rate", f"must be >= 0, got {self.bias_update_rate!r}")
        _positive_int(self.expert_granularity, "expert_granularity")
        if self.is_moe:
            _check(
                self.expert_hidden % self.expert_granularity == 0,
                "expert_granularity",
                f"must divide expert_hidden={self.expert_hidden} (each routed expert is split into "
                f"{self.expert_granularity} experts of width expert_hidden / {self.expert_granularity}), "
                f"got {self.expert_granularity}",
            )

    # ----------------------------------------------------------------- derived
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_heads

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def active_top_k(self) -> int:
        """Routed experts applied per token (0 for the dense model), in units of a full-width expert."""
        return self.top_k if self.is_moe else 0

    @property
    def routed_experts(self) -> int:
        """Routed experts the router chooses from: n_experts · expert_granularity (0 for the dense model)."""
        return self.n_experts * self.expert_granularity

    @property
    def routed_top_k(self) -> int:
        """Routed experts chosen per token: top_k · expert_granularity (0 for the dense model)."""
        return self.active_top_k * self.expert_granularity

    @property
    def routed_hidden(self) -> int:
        """Hidden width of one routed expert: expert_hidden / expert_granularity (common experts keep expert_hidden)."""
        return self.expert_hidden // self.expert_granularity

    @property
    def aux_loss_weight(self) -> float:
        """The load-balancing loss's weight in the training loss: aux_loss_coef with balance="aux_loss", else 0."""
        return self.aux_loss_coef if self.balance == "aux_loss" else 0.0

    def dense_equivalent(self) -> "ModelConfig":
        """The dense model with the same active parameters per token (for fair comparisons)."""
        active_experts = self.active_top_k + self.n_common_experts
        return self.replace(n_experts=0, n_common_experts=1, expert_hidden=active_experts * self.expert_hidden)

    def param_counts(self) -> dict[str, int]:
        """Parameter counts computed from the formula (tests check them against the module).

        ``total``: every parameter. ``active``: those one token uses (routed experts
        counted ``routed_top_k`` times, not ``routed_experts``). ``embedding``: token + learned
        position tables (the tied output head is not counted twice). ``matmul``: the
        weight-matrix entries one training token multiplies through (attention, router
        with its noise weights, common + chosen routed experts, output head; not the
        embedding lookups): the N of the 6·N FLOPs per token. With ``expert_granularity``
        m the routed experts' matrices keep their total and active sizes; the router
        grows m-fold and each of the m·n experts has its own output bias. An untied head
        counts in ``total`` and ``active``, a tied one does not (it is the token embedding).
        """
        d, h, b, V = self.n_embd, self.expert_hidden, int(self.bias), self.vocab_size
        # each component as (matrix entries, vector entries)
        layer_norm = (0, d + b * d)
        routed_expert = (2 * d * self.routed_hidden, b * (self.routed_hidden + d))
        qk_gains = 2 * self.head_dim if self.qk_norm else 0  # one gain vector for q, one for k
        attention = (4 * d * d, b * 4 * d + qk_gains)
        router = (d * self.routed_experts * (2 if self.router_noise else 1), 0)
        # common experts are stored fused as one FFN of width n_common * h: one output bias
        n_common = self.n_common_experts
        common = (n_common * 2 * d * h, b * (n_common * h + d) if n_common else 0)
        per_layer_fixed = [2 * layer_norm[1], sum(attention), sum(router), sum(common)]
        token_embedding = V * d
        position = self.context_window * d if self.pos_encoding == "learned" else 0
        head = (0 if self.tie_weights else d * V) + b * V
        outside = token_embedding + position + layer_norm[1] + head
        total = outside + self.n_layers * (sum(per_layer_fixed) + self.routed_experts * sum(routed_expert))
        active = outside + self.n_layers * (sum(per_layer_fixed) + self.routed_top_k * sum(routed_expert))
        routed = self.routed_top_k * routed_expert[0]
        matmul = d * V + self.n_layers * (attention[0] + router[0] + common[0] + routed)
        return {"total": total, "active": active, "embedding": token_embedding + position, "matmul": matmul}

    # ------------------------------------------------------------- conversions
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        _check_known_fields(cls, values, extra={"num_embeds"})
        return cls(**values)

    def replace(self, **changes: Any) -> "ModelConfig":
        return ModelConfig.from_dict({**self.to_dict(), **changes})


@dataclass
class TrainConfig:
    """How to train: budget, optimizer, schedules and the seed's context-window warmup.

    Budget: ``max_steps`` optimizer steps, ``max_tokens`` training tokens and/or
    ``max_minutes`` of wall time, whichever ends first (steps and tokens do not depend on
    the machine's speed: prefer them for comparisons); the learning-rate and window schedules are defined over the budget's
    progress (0 → 1), so a time budget gets a complete schedule too.

    The window starts at ``current_context_window`` tokens and grows by
    ``context_window_step`` until it reaches the model's ``context_window``, at
    ``window_warmup_fraction`` of the budget (0 = a fixed full window). ``batch_keep``
    says what stays constant while the window grows: the number of sequences per
    batch (``sequences``: batch_size sequences, as the seed did) or the number of
    tokens (``tokens``: batch_size × context_window tokens, so more, shorter
    sequences early on).

    ``optimizer``: ``adamw``, or ``muon`` (Muon for the attention and expert matrices, AdamW
    for the rest; :mod:`moelab.train.optim`). Both follow the one learning-rate schedule, and
    both decay the matrices by ``weight_decay``.
    """

    max_steps: int | None = 1000
    max_minutes: float | None = None
    max_tokens: int | None = None
    batch_size: int = 32
    optimizer: str = "adamw"  # one of OPTIMIZERS: "muon" = Muon for the hidden matrices, AdamW for the rest
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine schedule ends at lr * min_lr_ratio
    warmup_steps: int = 50  # linear learning-rate warmup
    weight_decay: float = 0.1  # on matrices, embeddings included; not biases, norms, router-noise weights
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    grad_accum_steps: int = 1
    current_context_window: int = 16
    context_window_step: int = 16
    window_warmup_fraction: float = 0.3
    batch_keep: str = "sequences"  # one of BATCH_KEEPS
    eval_every: int = 100  # steps between validation evaluations
    eval_windows: int = 256  # fixed validation windows, evenly spaced over the split
    checkpoint_every: int = 250
    keep_checkpoints: int = 2  # older periodic checkpoints are deleted
    log_every: int = 10  # steps between metric rows
    seed: int = 1337
    precision: str = "auto"  # one of PRECISIONS; see moelab.train.precision
    compile: bool = False  # torch.compile the model for training steps
    cuda_graphs: bool = True  # on CUDA, replay each training step from a CUDA graph where it can (moelab.train.cuda_graph)

    ALIASES: ClassVar[dict[str, str]] = {"learning_rate": "lr", "epochs": "max_steps"}

    def __post_init__(self) -> None:
        _check_types(self)
        self.betas = tuple(self.betas)
        for name in (
            "batch_size",
            "grad_accum_steps",
            "current_context_window",
            "context_window_step",
            "eval_every",
            "eval_windows",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
        ):
            _positive_int(getattr(self, name), name)
        if self.max_steps is not None:
            _positive_int(self.max_steps, "max_steps")
        if self.max_tokens is not None:
            _positive_int(self.max_tokens, "max_tokens")
        if self.max_minutes is not None:
            _check(self.max_minutes > 0, "max_minutes", f"must be > 0 or None, got {self.max_minutes!r}")
        _check(
            any(getattr(self, name) is not None for name in BUDGET_FIELDS),
            "max_steps",
            "give a budget: max_steps, max_tokens and/or max_minutes (training stops at the first reached)",
        )
        _check(
            self.optimizer in OPTIMIZERS,
            "optimizer",
            f"must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}",
        )
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr!r}")
        _check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio!r}")
        _check(
            isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
            "warmup_steps",
            f"must be an integer >= 0, got {self.warmup_steps!r}",
        )
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        _check(
            len(self.betas) == 2 and all(0 <= x < 1 for x in self.betas),
            "betas",
            f"must be two numbers in [0, 1), got {self.betas!r}",
        )
        _check(self.grad_clip >= 0, "grad_clip", f"must be >= 0 (0 disables clipping), got {self.grad_clip!r}")
        _check(
            0 <= self.window_warmup_fraction <= 1,
            "window_warmup_fraction",
            f"must be in [0, 1], got {self.window_warmup_fraction!r}",
        )
        _check(
            self.precision in PRECISIONS,
            "precision",
            f"must be one of {', '.join(PRECISIONS)}; got {self.precision!r}",
        )
        _check(isinstance(self.compile, bool), "compile", f"must be true or false, got {self.compile!r}")
        _check(isinstance(self.cuda_graphs, bool), "cuda_graphs", f"must be true or false, got {self.cuda_graphs!r}")
        _check(
            self.batch_keep in BATCH_KEEPS,
            "batch_keep",
            f"must be one of {', '.join(BATCH_KEEPS)}; got {self.batch_keep!r}",
        )

    def check_against(self, model: ModelConfig) -> None:
        """Validate the fields that depend on the model (the window schedule)."""
        _check(
            self.current_context_window <= model.context_window,
            "current_context_window",
            f"must be <= the model's context_window={model.context_window}, got {self.current_context_window}",
        )

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["betas"] = list(self.betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        values = {cls.ALIASES.get(k, k): v for k, v in values.items()}
        _check_known_fields(cls, values)
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def config_diff(old: ModelConfig | TrainConfig, new: ModelConfig | TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two configs of one kind: {field: (old, new)}."""
    before, after = old.to_dict(), new.to_dict()
    return {k: (before.get(k), after.get(k)) for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)}
