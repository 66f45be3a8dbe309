"""Permutation-invariant and -equivariant set networks over modality features.

Inputs are stacked per-modality features ``h`` of shape ``(*lead, M, E)`` and a bool mask
``(*lead, M)`` saying which modalities belong to each row's subset S. The modality axis is a SET
axis: a permutation π of the modalities acts on the inputs as ``(h[..., π, :], mask[..., π])``
and on equivariant outputs as ``out[..., π, :]``. The invariant networks satisfy
``f(h[..., π, :], mask[..., π]) == f(h, mask)``; the equivariant ones satisfy
``f(h[..., π, :], mask[..., π], c) == f(h, mask, c)[..., π, :]``. Entries outside S never
influence the result (they are excluded with ``torch.where`` and with masked attention logits),
so masking a modality equals leaving it out of the set.

- :class:`SumPooling` (DeepSets): ``ρ(Σ_{s∈S} χ(h_s))``.
- :class:`SelfAttentionPooling` (a set transformer without inducing points): ``ρ(Σ_{s∈S} g^L_s)``
  with masked pre-LayerNorm multi-head self-attention blocks.
- :class:`EquivariantSumPooling`: ``out_s = ρ(Σ_{t∈S} χ0(h_t) + χ1(c) + χ2(h_s))``.
- :class:`EquivariantSelfAttention`: ``g⁰_s = χ1(h_s) + χ2(c)``, masked blocks, ``out_s = Dense(LN(g^L_s))``.

All networks broadcast over leading dimensions; a condition ``c`` of shape ``(*lead_c, C)`` may
carry extra leading dimensions (e.g. particles) that broadcast against ``(*lead, M, E)``.

:class:`SetGaussianHead` turns a set network's output ``[μ, ℓ]`` into a Gaussian's ``(loc, scale)``
with ``σ = min_scale + exp_linear(ℓ)``: the exp(ℓ) of "Learning multi-modal generative models with
permutation-invariant encoders and tighter variational objectives" up to a knee, linear beyond it
(see :func:`exp_linear` for why a sum over the set needs that).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .networks import EXP_LINEAR_KNEE, MLP, GaussianHead, exp_linear  # noqa: F401 (re-exported)
from .shared_encodings import cached, tensor_key

LAYER_NORM_EPS = 1e-6


def masked_logit_fill(dtype: torch.dtype) -> float:
    """The large FINITE negative value written into masked attention logits.

    A finite value keeps a row whose keys are all masked (S = ∅) finite: its softmax is uniform
    instead of NaN, and the row is discarded later anyway. Unmasked logits exceed it by so much
    that masked keys get weight exactly 0.
    """
    return torch.finfo(dtype).min


def lecun_normal_(module: nn.Module) -> nn.Module:
    """LeCun-normal init of every Linear/Conv layer in ``module``, zero biases; returns ``module``.

    Weights ~ truncated normal on ±2 std with std √(1/fan_in) after truncation.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            fan_in = layer.weight[0].numel()
            std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # the std of N(0,1) truncated to ±2
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def _check_set(h: torch.Tensor, mask: torch.Tensor, in_dim: int) -> None:
    if h.dim() < 2 or h.shape[-1] != in_dim:
        raise ValueError(f"set features must have shape (*lead, M, {in_dim}), got {tuple(h.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"set mask must be a bool tensor, got {mask.dtype}")
    if mask.shape[-1] != h.shape[-2]:
        raise ValueError(f"set mask {tuple(mask.shape)} does not match {h.shape[-2]} set elements of {tuple(h.shape)}")


def masked_sum(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Σ_{s∈S} g_s``: ``(*lead, M, P), (*lead, M) → (*lead, P)``; masked entries are replaced, not multiplied."""
    return torch.where(mask.unsqueeze(-1), g, torch.zeros_like(g)).sum(-2)


def _mlp(in_dim: int, hidden: int, num_hidden: int, out_dim: int, activation: str) -> MLP:
    return MLP(in_dim, [hidden] * num_hidden, out_dim, activation)


class SetGaussianHead(GaussianHead):
    """Split ``(*lead, 2D)`` into ``loc (*lead, D)`` and ``scale = min_scale + exp_linear(raw) (*lead, D)``."""

    def __init__(self, min_scale: float = 1e-3):
        super().__init__(float(min_scale), positive="exp_linear")


class _SumPoolingNetwork(nn.Module):
    """Base of the sum-pooling networks: builds χ's ``in → H (×num_hidden) → P`` and ρ ``P → H (×num_hidden) → out``."""

    def __init__(self, out_dim: int, hidden: int, pooled_dim: int, num_hidden: int, activation: str):
        super().__init__()
        self.out_dim, self.pooled_dim = out_dim, pooled_dim
        self._sizes = (hidden, num_hidden, activation)

    def _chi(self, in_dim: int) -> MLP:
        hidden, num_hidden, activation = self._sizes
        return _mlp(in_dim, hidden, num_hidden, self.pooled_dim, activation)

    def _rho(self) -> MLP:
        hidden, num_hidden, activation = self._sizes
        return _mlp(self.pooled_dim, hidden, num_hidden, self.out_dim, activation)


class SumPooling(_SumPoolingNetwork):
    """DeepSets ``ρ(Σ_{s∈S} χ(h_s))``: ``(*lead, M, E), (*lead, M) → (*lead, out_dim)``.

    χ: E → H (×``num_hidden``) → P; ρ: P → H (×``num_hidden``) → ``out_dim``; LeakyReLU(0.01) by
    default. With S = ∅ the output is ρ(0), a learned data-independent value.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 256,
        pooled_dim: int = 256,
        num_hidden: int = 2,
        activation: str = "leaky_relu",
    ):
        super().__init__(out_dim, hidden, pooled_dim, num_hidden, activation)
        self.in_dim = in_dim
        self.chi = self._chi(in_dim)
        self.rho = self._rho()

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``a = Σ_{s∈S} χ(h_s)``: ``(*lead, P)``.

        χ acts on each element alone, so inside :func:`~pyro_mmvae.nn.shared_encodings.shared_encodings`
        χ(h) is computed once per features tensor and shared by every subset pooled from it.
        """
        _check_set(h, mask, self.in_dim)
        chi = cached((id(self), "chi", *tensor_key(h)), lambda: self.chi(h), keep=(h,))
        return masked_sum(chi, mask)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rho(self.pool(h, mask))


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention over the set axis with attention mask ``m mᵀ``.

    ``(*lead, M, P), (*lead, M) → (*lead, M, P)``. Q, K, V and the output projection have no
    biases; logits are divided by √(head dim); logits whose query or key lies outside S are set
    to :func:`masked_logit_fill`.
    """

    def __init__(self, dim: int, num_heads: int = 4):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} must be divisible by the number of heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # (*lead, M, P) -> (*lead, heads, M, head_dim)
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (*lead, heads, M, M)
        pair = (mask.unsqueeze(-1) & mask.unsqueeze(-2)).unsqueeze(-3)  # (*lead, 1, M, M)
        logits = torch.where(pair, logits, torch.full_like(logits, masked_logit_fill(logits.dtype)))
        out = torch.softmax(logits, dim=-1) @ v  # (*lead, heads, M, head_dim)
        return self.output(out.transpose(-3, -2).flatten(-2))


class SetAttentionBlock(nn.Module):
    """Masked pre-LayerNorm transformer block on ``(*lead, M, P)``.

    ``u = g + MHA(LN(g), mask)``; ``g' = u + Dense_P(act(Dense_H(LN(u))))``.
    """

    def __init__(self, dim: int, hidden: int, num_heads: int = 4, activation: str = "leaky_relu"):
        super().__init__()
        self.norm_attention = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attention = MaskedSelfAttention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = MLP(dim, [hidden], dim, activation)

    def forward(self, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        u = g + self.attention(self.norm_attention(g), mask)
        return u + self.mlp(self.norm_mlp(u))


class SetTransformer(nn.Module):
    """``num_layers`` :class:`SetAttentionBlock` s followed by a final LayerNorm: equivariant on ``(*lead, M, P)``."""

    def __init__(self, dim: int, hidden: int, num_layers: int = 1, num_heads: int = 4, activation: str = "leaky_relu"):
        super().__init__()
        self.blocks = nn.ModuleList([SetAttentionBlock(dim, hidden, num_heads, activation) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            g = block(g, mask)
        return self.norm(g)


def _check_condition(c: torch.Tensor, cond_dim: int) -> None:
    if c.shape[-1] != cond_dim:
        raise ValueError(f"condition must have shape (*lead, {cond_dim}), got {tuple(c.shape)}")


class _AttentionNetwork(nn.Module):
    """Base of the attention networks: ``g⁰_s = embed(h_s) [+ embed_cond(c)]`` → :class:`SetTransformer` → ``g^L``.

    ``embed``: E → H → P (and ``embed_cond``: C → H → P when ``cond_dim`` is given), one hidden layer.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        dim: int,
        num_layers: int,
        num_heads: int,
        activation: str,
        cond_dim: int | None = None,
    ):
        super().__init__()
        self.in_dim, self.dim, self.cond_dim = in_dim, dim, cond_dim
        self.embed = MLP(in_dim, [hidden], dim, activation)
        if cond_dim is not None:
            self.embed_cond = MLP(cond_dim, [hidden], dim, activation)
        self.transformer = SetTransformer(dim, hidden, num_layers, num_heads, activation)

    def attend(self, h: torch.Tensor, mask: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """g^L: ``(*lead, M, P)`` (rows outside S hold finite values that nothing uses)."""
        _check_set(h, mask, self.in_dim)
        g = self.embed(h)
        if c is not None:
            _check_condition(c, self.cond_dim)
            g = g + self.embed_cond(c).unsqueeze(-2)  # (*lead, M, P)
        return self.transformer(g, mask)


class SelfAttentionPooling(_AttentionNetwork):
    """Set transformer ``ρ(Σ_{s∈S} g^L_s)``: ``(*lead, M, E), (*lead, M) → (*lead, out_dim)``.

    ``g⁰ = Dense(H) → act → Dense(P)`` applied to each h_s; ``num_layers`` masked pre-LN blocks
    with ``num_heads`` heads and a final LayerNorm give g^L; ρ: P → H (×``num_hidden``) →
    ``out_dim``. With S = ∅ the output is ρ(0).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 256,
        dim: int = 256,
        num_layers: int = 1,
        num_heads: int = 4,
        num_hidden: int = 2,
        activation: str = "leaky_relu",
    ):
        super().__init__(in_dim, hidden, dim, num_layers, num_heads, activation)
        self.out_dim = out_dim
        self.rho = _mlp(dim, hidden, num_hidden, out_dim, activation)

    def elements(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """g^L: ``(*lead, M, P)`` (rows outside S hold finite values that nothing uses)."""
        return self.attend(h, mask)

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``a = Σ_{s∈S} g^L_s``: ``(*lead, P)``."""
        return masked_sum(self.elements(h, mask), mask)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rho(self.pool(h, mask))


class EquivariantSumPooling(_SumPoolingNetwork):
    """``out_s = ρ(Σ_{t∈S} χ0(h_t) + χ1(c) + χ2(h_s))`` for every s: ``→ (*lead, M, out_dim)``.

    Args:
        in_dim: E; cond_dim: C (the size of the condition, e.g. the shared latent z');
            out_dim: output per element; hidden, pooled_dim, num_hidden, activation: as in
            :class:`SumPooling` (χ0, χ1, χ2: → H (×num_hidden) → P; ρ: P → H (×num_hidden) → out).

    ``h (*lead, M, E)``, ``mask (*lead, M)``, ``c (*lead_c, C)`` with ``lead_c`` broadcasting
    against ``lead``. Outputs at positions outside S are finite but meaningless.
    """

    def __init__(
        self,
        in_dim: int,
        cond_dim: int,
        out_dim: int,
        hidden: int = 128,
        pooled_dim: int = 128,
        num_hidden: int = 2,
        activation: str = "leaky_relu",
    ):
        super().__init__(out_dim, hidden, pooled_dim, num_hidden, activation)
        self.in_dim, self.cond_dim = in_dim, cond_dim
        self.chi_set, self.chi_cond, self.chi_self = self._chi(in_dim), self._chi(cond_dim), self._chi(in_dim)
        self.rho = self._rho()

    def forward(self, h: torch.Tensor, mask: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        _check_set(h, mask, self.in_dim)
        _check_condition(c, self.cond_dim)
        pooled = masked_sum(self.chi_set(h), mask)  # (*lead, P)
        inner = (pooled + self.chi_cond(c)).unsqueeze(-2) + self.chi_self(h)  # (*lead, M, P)
        return self.rho(inner)


class EquivariantSelfAttention(_AttentionNetwork):
    """``g⁰_s = χ1(h_s) + χ2(c)``, masked pre-LN blocks, ``out_s = Dense(LN(g^L_s))``: ``→ (*lead, M, out_dim)``.

    χ1 (``embed``): E → H → P and χ2 (``embed_cond``): C → H → P (one hidden layer, as the invariant
    embedding); the final LayerNorm is the transformer's. Shapes as in :class:`EquivariantSumPooling`.
    """

    def __init__(
        self,
        in_dim: int,
        cond_dim: int,
        out_dim: int,
        hidden: int = 128,
        dim: int = 128,
        num_layers: int = 1,
        num_heads: int = 4,
        activation: str = "leaky_relu",
    ):
        super().__init__(in_dim, hidden, dim, num_layers, num_heads, activation, cond_dim)
        self.out_dim = out_dim
        self.head = nn.Linear(dim, out_dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.head(self.attend(h, mask, c))
