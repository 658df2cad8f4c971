"""The seed-style baseline: moelab's architecture written the naive way, for the benchmark.

One module per attention head and per expert, a masked softmax per head, and a boolean
mask over all tokens per expert: the approach of the seed repository. It computes the
same function as :class:`moelab.nn.model.Transformer` (dropout 0, dropless routing; the
activation, QK-norm and logit soft-capping options included) and
can take a moelab model's weights (:meth:`NaiveTransformer.from_model`), so
``python -m moelab.bench`` compares the two with identical parameters, and a test
checks that logits, loss and gradients agree. Not meant for training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F



class NaiveHead(torch.nn.Module):
    def __init__(self, n_embd: int, head_dim: int, bias: bool, qk_norm: bool) -> None:
        super().__init__()
        self.query = torch.nn.Linear(n_embd, head_dim, bias=bias)
        self.key = torch.nn.Linear(n_embd, head_dim, bias=bias)
        self.value = torch.nn.Linear(n_embd, head_dim, bias=bias)
        self.q_gain = torch.nn.Parameter(torch.ones(head_dim)) if qk_norm else None
        self.k_gain = torch.nn.Parameter(torch.ones(head_dim)) if qk_norm else None

    def forward(self, x, rope):
        T = x.shape[1]
        q, k, v = self.query(x), self.key(x), self.value(x)
        if self.q_gain is not None:
            q, k = naive_rms_norm(q, self.q_gain), naive_rms_norm(k, self.k_gain)
        if rope is not None:
            q, k = naive_rope(q, *rope), naive_rope(k, *rope)
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v


def naive_rope(x, cos, sin):
    """Rotary embedding written out per half: (a, b) -> (a cos - b sin, b cos + a sin)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[:, :half], sin[:, :half]
    return torch.cat([a * c - b * s, b * c + a * s], dim=-1)


def naive_rms_norm(x, gain):
    """x / sqrt(mean(x²) + eps) · gain over the last dim (eps: the dtype's, as torch's RMSNorm default)."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps) * gain


class NaiveExpert(torch.nn.Module):
    def __init__(self, n_embd: int, hidden: int, bias: bool, activation: str) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(n_embd, hidden, bias=bias)
        self.proj = torch.nn.Linear(hidden, n_embd, bias=bias)
        self.activation = activation

    def forward(self, x):
        h = self.fc(x)
        return self.proj(F.gelu(h) if self.activation == "gelu" else torch.relu(h) ** 2)


class NaiveMoE(torch.nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        d, h = config.n_embd, config.expert_hidden
        args = (d, h, config.bias, config.activation)
        self.common = torch.nn.ModuleList(NaiveExpert(*args) for _ in range(config.n_common_experts))
        self.experts = torch.nn.ModuleList(NaiveExpert(*args) for _ in range(config.n_experts))
        if config.n_experts:
            self.gate = torch.nn.Linear(d, config.n_experts, bias=False)
            self.noise = torch.nn.Linear(d, config.n_experts, bias=False) if config.router_noise else None

    def forward(self, x):
        c = self.config
        out = torch.zeros_like(x)
        for expert in self.common:  # the bias of the fused projection is carried by the first
            out = out + expert(x)
        zero = x.new_zeros(())
        if not c.n_experts:
            return out, zero, zero
        clean = self.gate(x)
        logits = clean
        if self.noise is not None and self.training:
            logits = clean + torch.randn_like(clean) * F.softplus(self.noise(x))
        probs = torch.softmax(logits, dim=-1)
        top_probs, top_idx = probs.topk(c.top_k, dim=-1)
        gates = top_probs / top_probs.sum(-1, keepdim=True) if c.top_k > 1 else top_probs
        flat_x, flat_out = x.view(-1, x.shape[-1]), out.view(-1, x.shape[-1]).clone()
        flat_idx, flat_gates = top_idx.view(-1, c.top_k), gates.view(-1, c.top_k)
        for e, expert in enumerate(self.experts):
            mask = (flat_idx == e).any(dim=-1)
            if mask.any():
                gate = (flat_gates * (flat_idx == e))[mask].sum(-1, keepdim=True)
                flat_out[mask] += expert(flat_x[mask]) * gate
        flat_probs = probs.view(-1, c.n_experts)
        fraction = torch.stack([(flat_idx == e).sum() for e in range(c.n_experts)]).to(flat_probs.dtype) / flat_idx.numel()
        aux = c.n_experts * (fraction * flat_probs.mean(0)).sum()
        z = torch.logsumexp(clean.to(torch.promote_types(clean.dtype, torch.float32)), dim=-1).square().mean()
        return flat_out.view_as(x), aux, z


class NaiveBlock(torch.nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        d = config.n_embd
        self.ln1 = torch.nn.LayerNorm(d, bias=config.bias)
        self.heads = torch.nn.ModuleList(
            NaiveHead(d, config.head_dim, config.bias, config.qk_norm) for _ in range(config.n_heads)
        )
        self.proj = torch.nn.Linear(d, d, bias=config.bias)
        self.ln2 = torch.nn.LayerNorm(d, bias=config.bias)
        self.moe = NaiveMoE(config)

    def forward(self, x, rope):
        h = self.ln1(x)
        x = x + self.proj(torch.cat([head(h, rope) for head in self.heads], dim=-1))
        y, aux, z = self.moe(self.ln2(x))
        return x + y, aux, z


class NaiveTransformer(torch.nn.Module):
    """The seed-style implementation of moelab's architecture (dropout 0, dropless routing)."""

    def __init__(self, config) -> None:
        super().__init__()
        if config.dropout or config.capacity_factor is not None:
            raise ValueError("the naive reference has no dropout and no capacity limit")
        if (config.gate, config.balance, config.expert_granularity) != ("softmax", "aux_loss", 1):
            raise ValueError("the naive reference routes as the seed did: gate='softmax', balance='aux_loss', "
                             "expert_granularity=1")  # fmt: skip
        self.config = config
        self.tok_emb = torch.nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = torch.nn.Embedding(config.context_window, config.n_embd)
        self.blocks = torch.nn.ModuleList(NaiveBlock(config) for _ in range(config.n_layers))
        self.ln_f = torch.nn.LayerNorm(config.n_embd, bias=config.bias)
        self.head = torch.nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)

    @classmethod
    def from_model(cls, model) -> "NaiveTransformer":
        """A naive copy holding exactly the weights of a moelab Transformer."""
        naive = cls(model.config).to(next(model.parameters()).device, next(model.parameters()).dtype)
        naive.copy_weights(model)
        return naive

    @torch.no_grad()
    def copy_weights(self, model) -> None:
        c = self.config
        d, hd, h = c.n_embd, c.head_dim, c.expert_hidden
        self.tok_emb.weight.copy_(model.tok_emb.weight)
        if c.pos_encoding == "learned":
            self.pos_emb.weight.copy_(model.pos_emb.weight)
        elif c.pos_encoding == "sinusoidal":
            self.pos_emb.weight.copy_(model.pos_table)
        else:
            self.pos_emb.weight.zero_()
        for mine, theirs in zip(self.blocks, model.blocks):
            mine.ln1.load_state_dict(theirs.ln1.state_dict())
            mine.ln2.load_state_dict(theirs.ln2.state_dict())
            mine.proj.load_state_dict(theirs.attn.proj.state_dict())
            w, b = theirs.attn.qkv.weight, theirs.attn.qkv.bias
            for i, head in enumerate(mine.heads):
                for j, part in enumerate((head.query, head.key, head.value)):
                    rows = slice(j * d + i * hd, j * d + (i + 1) * hd)
                    part.weight.copy_(w[rows])
                    if b is not None:
                        part.bias.copy_(b[rows])
                if head.q_gain is not None:  # the model shares one gain per q and k between heads
                    head.q_gain.copy_(theirs.attn.q_norm.weight)
                    head.k_gain.copy_(theirs.attn.k_norm.weight)
            moe = theirs.moe
            for i, expert in enumerate(mine.moe.common):
                cols = slice(i * h, (i + 1) * h)
                expert.fc.weight.copy_(moe.common.fc.weight[cols])
                expert.proj.weight.copy_(moe.common.proj.weight[:, cols])
                if c.bias:
                    expert.fc.bias.copy_(moe.common.fc.bias[cols])
                    expert.proj.bias.copy_(moe.common.proj.bias if i == 0 else torch.zeros_like(moe.common.proj.bias))
            for e, expert in enumerate(mine.moe.experts):
                expert.fc.weight.copy_(moe.experts.w1[e].T)
                expert.proj.weight.copy_(moe.experts.w2[e].T)
                if c.bias:
                    expert.fc.bias.copy_(moe.experts.b1[e])
                    expert.proj.bias.copy_(moe.experts.b2[e])
            if c.n_experts:
                mine.moe.gate.weight.copy_(moe.router.gate.weight)
                if mine.moe.noise is not None:
                    mine.moe.noise.weight.copy_(moe.router.noise.weight)
        self.ln_f.load_state_dict(model.ln_f.state_dict())
        self.head.weight.copy_(model.head.weight)
        if c.bias:
            self.head.bias.copy_(model.head.bias)

    def forward(self, idx, targets=None):
        c = self.config
        T = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))
        rope = None
        if c.pos_encoding == "rope":
            inv_freq = 1.0 / c.rope_base ** (torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim)
            angles = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq).repeat(1, 2).to(x.dtype)
            rope = (angles.cos(), angles.sin())
        aux_total, z_total = 0.0, 0.0
        for block in self.blocks:
            x, aux, z = block(x, rope)
            aux_total, z_total = aux_total + aux, z_total + z
        logits = self.head(self.ln_f(x))
        if c.logit_softcap is not None:
            logits = c.logit_softcap * torch.tanh(logits / c.logit_softcap)
        if targets is None:
            return logits, None
        wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
        ce = F.cross_entropy(wide.view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
        n = len(self.blocks)
        return logits, ce + c.aux_loss_coef * aux_total / n + c.z_loss_coef * z_total / n
