"""ModelConfig: the architecture's fields, their validation and the sizes derived from them.

Names follow the seed repository where it had one (``context_window``, ``num_embeds``
as an alias of ``n_embd``). The config validates itself on construction and raises a
``ValueError`` that names the field and what it accepts.
"""

from __future__ import annotations

import math
from dataclasses import InitVar, asdict, dataclass
from typing import Any

from moelab.config.fields import check, check_known_fields, check_positive_int, check_types

POS_ENCODINGS = ("learned", "sinusoidal", "rope")
GATES = ("softmax", "sigmoid")  # ModelConfig.gate: how router logits become scores (see moelab.nn.moe.layer)
BALANCES = ("aux_loss", "bias", "none")  # ModelConfig.balance: how the expert load is balanced
ACTIVATIONS = ("gelu", "relu2")  # the feed-forward nonlinearity; relu2 is relu(x)² (moelab.nn.moe.experts)


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
            check(
                self.n_embd in (default, num_embeds),
                "num_embeds",
                f"is an alias of n_embd; got num_embeds={num_embeds!r} and n_embd={self.n_embd!r}, give only one",
            )
            self.n_embd = num_embeds
        if self.expert_hidden is None:
            self.expert_hidden = 4 * self.n_embd
        self.validate()

    def validate(self) -> None:
        check_types(self)
        for name in ("vocab_size", "n_layers", "n_heads", "n_embd", "context_window", "expert_hidden"):
            check_positive_int(getattr(self, name), name)
        self._validate_attention()
        self._validate_expert_counts()
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout!r}")
        check(self.rope_base > 0, "rope_base", f"must be > 0, got {self.rope_base!r}")
        for name in ("aux_loss_coef", "z_loss_coef"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)!r}")
        if self.capacity_factor is not None:
            check(
                self.capacity_factor > 0,
                "capacity_factor",
                f"must be > 0 or None (dropless), got {self.capacity_factor!r}",
            )
        check(
            self.activation in ACTIVATIONS,
            "activation",
            f"must be one of {', '.join(ACTIVATIONS)}; got {self.activation!r}",
        )
        if self.logit_softcap is not None:
            check(
                0 < self.logit_softcap < math.inf,
                "logit_softcap",
                f"must be a finite number > 0 (the cap c of c · tanh(logits / c)) or None, got {self.logit_softcap!r}",
            )
        self._validate_routing()

    def _validate_attention(self) -> None:
        """The attention shape and position encoding: n_heads divides n_embd, RoPE gets an even head size."""
        check(
            self.n_embd % self.n_heads == 0,
            "n_embd",
            f"must be divisible by n_heads={self.n_heads}, got {self.n_embd}",
        )
        check(
            self.pos_encoding in POS_ENCODINGS,
            "pos_encoding",
            f"must be one of {', '.join(POS_ENCODINGS)}; got {self.pos_encoding!r}",
        )
        if self.pos_encoding == "rope":
            check(
                self.head_dim % 2 == 0,
                "pos_encoding",
                f"'rope' needs an even head size (n_embd / n_heads), got {self.head_dim}; "
                "use 'learned' or 'sinusoidal', or change n_embd / n_heads",
            )

    def _validate_expert_counts(self) -> None:
        """n_experts and n_common_experts (the dense model needs a common expert), and top_k."""
        for name in ("n_experts", "n_common_experts"):
            value = getattr(self, name)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                name,
                f"must be an integer >= 0, got {value!r}",
            )
        if self.n_experts == 0:
            check(
                self.n_common_experts >= 1,
                "n_common_experts",
                "must be >= 1 when n_experts=0 (the dense model's feed-forward is its common experts)",
            )
        else:
            check(
                isinstance(self.top_k, int) and 1 <= self.top_k <= self.n_experts,
                "top_k",
                f"must be an integer in 1..n_experts={self.n_experts}, got {self.top_k!r}",
            )

    def _validate_routing(self) -> None:
        """The routing choices: gate, balance, bias_update_rate, expert_granularity."""
        for name, allowed in (("gate", GATES), ("balance", BALANCES)):
            value = getattr(self, name)
            check(value in allowed, name, f"must be one of {', '.join(allowed)}; got {value!r}")
        check(self.bias_update_rate >= 0, "bias_update_rate", f"must be >= 0, got {self.bias_update_rate!r}")
        check_positive_int(self.expert_granularity, "expert_granularity")
        if self.is_moe:
            check(
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
        check_known_fields(cls, values, extra={"num_embeds"})
        return cls(**values)

    def replace(self, **changes: Any) -> "ModelConfig":
        return ModelConfig.from_dict({**self.to_dict(), **changes})
