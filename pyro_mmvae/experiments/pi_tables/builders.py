"""Data, models, encoders and objectives of one table configuration.

Tables 1-2 use linear decoders (the exact likelihood of the learned model is then analytic),
Tables 3-4 the iVAE MLP decoders; the encoders are the aggregation guides of the rows.
"""

from __future__ import annotations

from functools import lru_cache

from torch import nn

from ...data.synthetic import bimodal_linear, ivae_bimodal, ivae_multimodal, multimodal_linear
from ...guides.aggregation import (
    MoEGuide,
    PoEGuide,
    SelfAttentionGuide,
    SelfAttentionMixtureGuide,
    SumPoolingGuide,
    SumPoolingMixtureGuide,
)
from ...guides.equivariant import EquivariantPoEGuide, EquivariantSelfAttentionGuide, EquivariantSumPoolingGuide
from ...infer.masked import MaskedELBO, MixtureELBO
from ...models.multimodal_vae import MultimodalVAE
from ...models.private import PrivateLatentVAE
from ...nn.set_aggregators import lecun_normal_
from .settings import LATENT_DIM, NUM_COMPONENTS, PRIVATE_DIMS, SIZES, Row


@lru_cache(maxsize=4)
def make_data(table: int, section: str, seed: int, num_train: int, num_test: int | None, cond_draws: int):
    """The seeded dataset of one configuration (cached: every row/objective of a seed shares it).

    Table 1: two linear-Gaussian modalities; Table 2: five (``section == "sparse"``: private latents);
    Table 3: iVAE data x ∈ R² with a one-hot label; Table 4: four non-linear 25-d views with missing
    rate η from the section name (``"eta=0.5"`` or ``"eta=0"``), a train and a test split.
    """
    if table == 1:
        return bimodal_linear(num_samples=num_train, seed=seed)
    if table == 2:
        return multimodal_linear(num_samples=num_train, sparse=(section == "sparse"), seed=seed)
    if table == 3:
        return ivae_bimodal(num_samples=num_train, seed=seed)
    if table == 4:
        eta = {"eta=0.5": 0.5, "eta=0": 0.0}[section]
        return ivae_multimodal(
            num_modalities=4, missing_rate=eta, num_train=num_train, num_test=num_test, seed=seed, cond_draws=cond_draws
        )
    raise ValueError(f"no table {table}")


def _mlp_decoder(latent_dim: int, out_dim: int) -> nn.Module:
    """Dense(out) → LeakyReLU(0.1) → Dense(out): the iVAE decoders of Tables 3-4."""
    return nn.Sequential(nn.Linear(latent_dim, out_dim), nn.LeakyReLU(0.1), nn.Linear(out_dim, out_dim))


def build_model(table: int, row: Row, modalities) -> nn.Module:
    """The generative model of ``table``: linear decoders (Tables 1-2) or the iVAE MLP decoders (3-4).

    Latent z of shape ``(batch, LATENT_DIM[table])``; a private-latent row (Table 2 sparse) has a
    shared z′ and one private z̃_s per modality of ``PRIVATE_DIMS`` dimensions each.
    """
    d = LATENT_DIM[table]
    if row.private:
        shared, private = PRIVATE_DIMS
        decoders = {m.name: lecun_normal_(nn.Linear(shared + private, m.shape[0])) for m in modalities}
        return PrivateLatentVAE(modalities, shared, private, decoders=decoders)
    if table in (1, 2):
        decoders = {m.name: lecun_normal_(nn.Linear(d, m.shape[0])) for m in modalities}
    else:
        decoders = {m.name: lecun_normal_(_mlp_decoder(d, m.shape[0])) for m in modalities}
    return MultimodalVAE(modalities, d, prior=row.prior, num_components=NUM_COMPONENTS, decoders=decoders)


def build_guide(table: int, row: Row, modalities, poe_mean: str = "correct") -> nn.Module:
    """The encoder of ``row`` with the sizes of ``table`` (``SIZES``); equivariant guides for private latents.

    ``poe_mean``: ``"correct"`` (the Gaussian product's mean) or ``"paper"`` (the published formula).
    """
    s = SIZES[table]
    if row.private:
        shared, private = PRIVATE_DIMS
        if row.aggregator == "PoE":
            return EquivariantPoEGuide(modalities, shared, private, poe_mean=poe_mean)
        cls = {"SumPooling": EquivariantSumPoolingGuide, "SelfAttention": EquivariantSelfAttentionGuide}[row.aggregator]
        return cls(modalities, shared, private)
    d = LATENT_DIM[table]
    if row.aggregator == "PoE":
        return PoEGuide(modalities, d, hidden=s["hidden"], poe_mean=poe_mean)
    if row.aggregator == "MoE":
        return MoEGuide(modalities, d, hidden=s["hidden"], min_scale=s["min_scale"])
    common = dict(feature_dim=s["feature"], hidden=s["hidden"], width=s["width"], min_scale=s["min_scale"])
    if row.aggregator == "SumPooling":
        return SumPoolingGuide(modalities, d, pooled_dim=s["width"], **common)
    if row.aggregator == "SelfAttention":
        return SelfAttentionGuide(modalities, d, dim=s["width"], num_layers=1, num_heads=4, **common)
    if row.aggregator == "SumPoolingMixture":
        return SumPoolingMixtureGuide(modalities, d, NUM_COMPONENTS, pooled_dim=s["width"], **common)
    if row.aggregator == "SelfAttentionMixture":
        return SelfAttentionMixtureGuide(modalities, d, NUM_COMPONENTS, dim=s["width"], num_heads=4, **common)
    raise ValueError(f"unknown aggregator {row.aggregator!r}")


def build_elbo(objective: str, mask_sampler: str):
    """The masked bound (``"masked"``) or the mixture bound (``"mixture"``): one particle, STL."""
    cls = {"masked": MaskedELBO, "mixture": MixtureELBO}[objective]
    return cls(num_particles=1, stl=True, mask_sampler=mask_sampler)
