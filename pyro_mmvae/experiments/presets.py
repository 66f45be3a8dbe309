"""The papers' training settings as named presets, per dataset and model.

``pyro-mmvae train --dataset D --model M`` starts from ``preset(D, M)``; every command-line option given
overrides the preset's value. The numbers come from the JNF paper's Appendix E ("Bridging the inference
gap in Multimodal Variational Autoencoders") and, for MNIST-SVHN-Text, from the permutation-invariant
paper's Appendix ("Learning multi-modal generative models with permutation-invariant encoders and
tighter variational objectives"). Where a paper trains "until convergence", the preset gives a fixed
epoch budget with early stopping on a validation split and says so in ``notes``.

Fields:

- ``latent_dim``: D of the shared latent z;
- ``beta``: the KL weight (the β that maximised mean coherence in the paper's tables for that model);
- ``batch_size``, ``lr``, ``epochs``: Adam's schedule; ``patience``: early-stopping patience (epochs);
- ``anneal_epochs``: β rises linearly from β/100 over this many epochs (0: off);
- ``flow_blocks``: MADE blocks of each JNF flow expert; ``projection_dim``: JNF-Shared's projector size k;
- ``joint_merge``: ``"mlp"`` (heads merged by a 2×512 MLP) or ``"concat"`` (heads concatenated, for
  Translated PolyMNIST), the JNF joint encoder; ``head_dim``: feature size of each joint-encoder head;
- ``weights``: per-modality reconstruction weights (the likelihood rescaling factors): ``"paper"`` (the
  published factors, :func:`pyro_mmvae.nn.architectures.likelihood_settings`), ``"largest"`` (the MoPoE
  rule w_m ∝ largest modality size / size of m), ``"none"`` or a ``{modality: weight}`` dict;
- ``base_channels``: width of the PolyMNIST ResNets (MMVAE+'s 64; ``None`` keeps the published width);
- ``nets``: which published PolyMNIST networks: ``None``/``"resnet"`` (MMVAE+'s, the JNF paper's) or
  ``"mopoe"`` (MoPoE's smaller conv nets).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..errors import InputError
from .baselines_mixture import MMVAE_LATENT_DIMS, MMVAEPLUS_LATENT_DIMS


@dataclass(frozen=True)
class Preset:
    """Training settings of one (dataset, model); see the module docstring for the fields."""

    latent_dim: int
    beta: float = 1.0
    batch_size: int = 128
    lr: float = 1e-3
    epochs: int = 100
    patience: int | None = None
    anneal_epochs: int = 0
    flow_blocks: int = 2
    projection_dim: int = 10
    joint_merge: str = "mlp"
    head_dim: int = 256
    weights: str | dict = "paper"
    base_channels: int | None = None
    nets: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)

    def arch_options(self) -> dict:
        """Keyword options of the dataset's networks (:mod:`pyro_mmvae.nn.architectures`)."""
        options = {} if self.base_channels is None else {"base_channels": self.base_channels}
        return options if self.nets is None else {**options, "nets": self.nets}


_UNTIL_CONVERGENCE = "the paper trains 'until convergence': the preset's epoch budget and patience are ours"

DATASET_PRESETS: dict[str, Preset] = {
    # JNF paper, Section 4.1 / Appendix A.4: a 2-D latent space that can be drawn.
    "toy": Preset(latent_dim=2, beta=1.0, batch_size=128, epochs=12),
    # JNF paper, Appendix E.2: MMVAE+'s ResNets, β-VAE with β = 2.5 as MMVAE+ (the paper's value is lost in
    # the text; 2.5 is MMVAE+'s PolyMNIST β), batch 128, lr 1e-3, D = 190 to match MMVAE+'s total capacity.
    "polymnist": Preset(
        latent_dim=190,
        beta=2.5,
        epochs=150,
        patience=10,
        notes=(_UNTIL_CONVERGENCE, "beta 2.5 follows MMVAE+ (the JNF paper's value is unreadable in its text)"),
    ),
    # JNF paper, Appendix E.3 and Table 4: D = 200, β = 0.5 selected for JNF, 3 MADE blocks, the joint
    # encoder concatenates its heads (no merging MLP).
    "translated-polymnist": Preset(
        latent_dim=200,
        beta=0.5,
        epochs=150,
        patience=10,
        flow_blocks=3,
        joint_merge="concat",
        notes=(_UNTIL_CONVERGENCE,),
    ),
    # JNF paper, Table 6: D = 20, batch 128, lr 1e-3, projection 10; Table 3: β = 2.5 maximises JNF's
    # mean coherence. Rescaling: SVHN 3·32·32 = 3072 vs MNIST 784 → w_mnist ≈ 3.92.
    "mnist-svhn": Preset(latent_dim=20, beta=2.5, epochs=100, patience=10, notes=(_UNTIL_CONVERGENCE,)),
    # Permutation-invariant paper, Appendix: 100 epochs, batch 250, Adam 5e-4 (cosine decay to 1e-4 there),
    # 40 shared latents, reconstruction weights ∝ 1/numel.
    "mnist-svhn-text": Preset(latent_dim=40, beta=1.0, batch_size=250, lr=5e-4, epochs=100),
    # JNF paper, Appendix E.4 and Table 7: D = 64, batch 64, lr 1e-3, Gaussian likelihoods, rescaling
    # factors of Table 7 (unreadable in the text: the size rule it cites, see likelihood_settings).
    "mhd": Preset(latent_dim=64, beta=1.0, batch_size=64, epochs=100, patience=10, notes=(_UNTIL_CONVERGENCE,)),
}

# Per-model departures from the dataset's preset (JNF paper, Appendix E): JNF-Shared on Translated
# PolyMNIST uses 2 MADE blocks (its DCCA variant; Appendix E.3 item 7); MMVAE and MMVAE+ have their own
# latent sizes (MMVAE+'s private size D̃ is its builder's table); JMVAE warms β up over 100 epochs.
_JNF_DATASETS = ("polymnist", "translated-polymnist", "mnist-svhn", "mhd")
MODEL_OVERRIDES: dict[tuple[str, str], dict] = {
    ("translated-polymnist", "jnf-shared"): {"flow_blocks": 2},
    **{(d, "jmvae"): {"anneal_epochs": 100} for d in _JNF_DATASETS},
    **{(d, "mmvae"): {"latent_dim": k} for d, k in MMVAE_LATENT_DIMS.items()},
    **{(d, "mmvaeplus"): {"latent_dim": k} for d, (k, _) in MMVAEPLUS_LATENT_DIMS.items()},
}


def preset(dataset: str, model: str) -> Preset:
    """The settings of ``model`` on ``dataset`` (``InputError`` for a dataset without a preset)."""
    if dataset not in DATASET_PRESETS:
        raise InputError(f"no preset for dataset {dataset!r}; expected one of {sorted(DATASET_PRESETS)}")
    return replace(DATASET_PRESETS[dataset], **MODEL_OVERRIDES.get((dataset, model), {}))
