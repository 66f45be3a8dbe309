"""Data, models, encoders and objectives of one table configuration.

Tables 1-2 use linear decoders (the exact likelihood of the learned model is then analytic),
Tables 3-4 the iVAE MLP decoders; the encoders are the aggregation guides of the rows.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from ...data.dataset import MultimodalDataset
from ...data.synthetic import (
    SyntheticData,
    bimodal_linear,
    ivae_bimodal,
    ivae_multimodal,
    multimodal_linear,
    partial_view_mask,
)
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
from .authors_data import authors_ivae_bimodal, authors_ivae_multimodal
from .settings import AUTHORS_TABLES, GENERATORS, LATENT_DIM, NUM_COMPONENTS, PRIVATE_DIMS, SIZES, VIEW_KEEP_PROB, Row

# Library generator, Table 4 with an explicit keep probability: the masks come from SeedSequence((seed, 4)).
TABLE4_MASK_STREAM = 4


@lru_cache(maxsize=4)
def make_data(
    table: int,
    section: str,
    seed: int,
    num_train: int,
    num_test: int | None,
    cond_draws: int,
    generator: str = "library",
    view_keep_prob: float | None = VIEW_KEEP_PROB,
) -> SyntheticData:
    """The seeded dataset of one configuration (cached: every row/objective of a seed shares it).

    Table 1: two linear-Gaussian modalities; Table 2: five (``section == "sparse"``: private latents);
    Table 3: iVAE data x ∈ R² with a one-hot label; Table 4: four non-linear 25-d views with missing
    rate η from the section name (``"eta=0.5"`` or ``"eta=0"``), a train and a test split.

    ``generator``: ``"library"`` (:mod:`pyro_mmvae.data.synthetic`, ``default_rng(seed)``) or ``"authors"``
    (Tables 3-4 only: the published scripts' exact datasets for their ``--seed``, see :mod:`.authors_data`).
    ``view_keep_prob`` (Table 4, library generator): the probability of keeping each view beyond the
    one every row keeps, the published code's 0.33 by default; the views are then drawn by
    :func:`~pyro_mmvae.data.synthetic.partial_view_mask` from ``SeedSequence((seed, 4))`` after the
    complete data. None: that function's own 1/3 for M = 4, η = 0.5. The
    authors' generator draws its masks as the published code does and ignores it.
    """
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; expected one of {GENERATORS}")
    if generator == "authors" and table not in AUTHORS_TABLES:
        raise ValueError(
            f"generator 'authors' exists for Tables {AUTHORS_TABLES} only (Table 1 has no published code, Table 2's "
            f"published code draws with JAX's PRNG); use generator 'library' for table {table}"
        )
    if table == 1:
        return bimodal_linear(num_samples=num_train, seed=seed)
    if table == 2:
        return multimodal_linear(num_samples=num_train, sparse=(section == "sparse"), seed=seed)
    if table == 3:
        gen = authors_ivae_bimodal if generator == "authors" else ivae_bimodal
        return gen(num_samples=num_train, seed=seed)
    if table == 4:
        eta = {"eta=0.5": 0.5, "eta=0": 0.0}[section]
        common = dict(num_modalities=4, num_train=num_train, num_test=num_test, seed=seed, cond_draws=cond_draws)
        if generator == "authors":
            return authors_ivae_multimodal(missing_rate=eta, **common)
        if view_keep_prob is None:
            return ivae_multimodal(missing_rate=eta, **common)
        return _with_view_masks(ivae_multimodal(missing_rate=0.0, **common), eta, view_keep_prob, seed)
    raise ValueError(f"no table {table}")


def _with_view_masks(data: SyntheticData, eta: float, keep_prob: float, seed: int) -> SyntheticData:
    """Complete Table 4 data with train and test view masks (:func:`~pyro_mmvae.data.synthetic.partial_view_mask`)."""
    rng = np.random.default_rng(np.random.SeedSequence((int(seed), TABLE4_MASK_STREAM)))
    names = [m.name for m in data.modalities]
    masks = []

    def masked(ds: MultimodalDataset) -> MultimodalDataset:
        full = ds.full
        mask = partial_view_mask(full.batch_size, len(names), eta, rng, keep_prob=keep_prob)
        masks.append(mask)
        present = {n: torch.from_numpy(np.ascontiguousarray(mask[:, j])) for j, n in enumerate(names)}
        return MultimodalDataset(full.data, present, full.labels, data.modalities)

    train, test = masked(data.train), masked(data.test)
    truth = {**data.truth, "missing_rate": eta, "present": np.concatenate(masks), "keep_prob": keep_prob}
    return SyntheticData(train, test, data.modalities, truth)


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


def build_guide(table: int, row: Row, modalities, poe_mean: str | None = None) -> nn.Module:
    """The encoder of ``row`` with the sizes of ``table`` (``SIZES``); equivariant guides for private latents.

    ``poe_mean`` (PoE rows): ``"correct"`` (the Gaussian product's mean) or ``"paper"`` (the published
    formula); default the row's ``poe_mean``.
    """
    poe_mean = row.poe_mean if poe_mean is None else poe_mean
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
