"""The papers' published encoders and decoders, selected by dataset name.

Every network broadcasts over leading dimensions like the library's other blocks: an encoder maps
``(*lead, *shape) → (*lead, out_dim)``, a decoder ``(*lead, in_dim) → (*lead, *param_shape)`` (see
:mod:`~pyro_mmvae.nn.architectures.blocks`). They plug into the library's models and guides unchanged::

    from pyro_mmvae.nn import architectures as arch

    mods = arch.dataset_modalities("polymnist")                     # Modality objects with the papers' likelihoods
    model = MultimodalVAE(mods, 190, decoders=arch.decoders("polymnist", mods, 190))
    guide = JointGuide(mods, 190, head_dim=256, heads=arch.encoders("polymnist", mods, 256))
    experts = FlowExpertGuide(mods, 190, encoders=arch.encoders("polymnist", mods, 2 * 190))

========================  ===========================================  ==============================
dataset                   modalities (shape)                           networks (module)
========================  ===========================================  ==============================
``toy``                   any                                          the library's default MLPs
``polymnist``             m0..m4 (3, 28, 28)                           MMVAE+ ResNets, or MoPoE's (``nets="mopoe"``)
``translated-polymnist``  m0..m4 (3, 28, 28)                           the same ResNets
``mnist-svhn``            mnist (1, 28, 28), svhn (3, 32, 32)          JNF Table 6 (mnist_svhn)
``mnist-svhn-text``       mnist, svhn, text (8, 71) one-hot or (8,)    MoPoE (mnist_svhn_text)
``mhd``                   image (1, 28, 28), sound (1, 32, 128),       JNF Table 7 / Nexus (mhd)
                          trajectory (200,)
========================  ===========================================  ==============================

The modules (:mod:`~pyro_mmvae.nn.architectures.polymnist`, :mod:`~pyro_mmvae.nn.architectures.mnist_svhn`,
:mod:`~pyro_mmvae.nn.architectures.mnist_svhn_text`, :mod:`~pyro_mmvae.nn.architectures.mhd`) say where each
layer fact comes from.

:func:`likelihood_settings` records each dataset's likelihood family, observation scale and
reconstruction weight (the papers' rescaling factors); the source of every number is cited beside it in the code.
Decoders of Normal/Laplace modalities end in the paper's output activation (a sigmoid where the paper
bounds the mean in [0, 1]); Bernoulli and categorical modalities get logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from torch import nn

from ...data.modality import Modality
from ...errors import InputError, InputTypeError, check_int
from ..networks import default_decoder, default_encoder
from .blocks import EventNet, PreActResnetBlock, check_output_shape, count_parameters
from .mhd import (
    MHDImageDecoder,
    MHDImageEncoder,
    MHDSoundDecoder,
    MHDSoundEncoder,
    MHDTrajectoryDecoder,
    MHDTrajectoryEncoder,
)
from .mnist_svhn import MNISTDecoder, MNISTEncoder, SVHNDecoder, SVHNEncoder
from .mnist_svhn_text import ALPHABET_SIZE, MoPoESVHNDecoder, MoPoESVHNEncoder, TextDecoder, TextEncoder
from .polymnist import (
    PolyMNISTConvDecoder,
    PolyMNISTConvEncoder,
    PolyMNISTDecoder,
    PolyMNISTEncoder,
    polymnist_decoder,
    polymnist_encoder,
)

DATASETS = ("toy", "polymnist", "translated-polymnist", "mnist-svhn", "mnist-svhn-text", "mhd")


@dataclass(frozen=True)
class NetSpec:
    """One modality's networks and likelihood in a dataset's published set-up.

    ``encoder(modality, out_dim, **options)`` and ``decoder(modality, in_dim, output, **options)`` build the
    networks; ``output`` is the decoder's output activation for a Normal/Laplace likelihood (logits otherwise).
    """

    modality: Modality  # the published modality: name, shape, likelihood, scale, weight
    encoder: Callable[..., nn.Module]
    decoder: Callable[..., nn.Module]
    output: str = "sigmoid"
    shapes: tuple[tuple[int, ...], ...] = ()  # further event shapes the networks take

    @property
    def accepted_shapes(self) -> tuple[tuple[int, ...], ...]:
        return (self.modality.shape, *self.shapes)


def _text_encoder(m: Modality, out_dim: int, **options) -> nn.Module:
    indices = m.likelihood == "categorical"
    if indices and m.num_classes != ALPHABET_SIZE:
        raise InputError(
            f"modality {m.name!r}: MoPoE's text networks read {ALPHABET_SIZE} symbols, got num_classes={m.num_classes}"
        )
    return TextEncoder(out_dim, indices=indices, **options)


# Rescaling factors: MMVAE (Shi et al. 2019) and MoPoE (Sutter et al. 2021) weight each modality's
# log-likelihood by (size of the largest modality) / (its size). SVHN 3·32·32 = 3072, MNIST 784.
_MNIST_WEIGHT = 3072 / 784  # ≈ 3.92; MMVAE's lik_scaling and MoPoE's rec_weights
# MoPoE's ``set_rec_weights`` counts the text modality's size as its 8 characters (``data_size = [8]``),
# not the 8·71 one-hot entries: 3072 / 8 = 384.
_TEXT_WEIGHT = 3072 / 8
# MHD: the JNF paper (Appendix E.4) rescales "following [MMVAE]"; Table 7's factors are unreadable in
# our copy, so the same size rule gives them: sound 1·32·128 = 4096, image 784, trajectory 200.
_MHD_SOUND = 1 * 32 * 128
# Laplace scale 0.75: the fixed decoder scale of MMVAE's MNIST/SVHN decoders, MoPoE's decoders and
# MMVAE+'s PolyMNIST decoder (``torch.tensor(0.75)`` returned beside the mean).
_LAPLACE_SCALE = 0.75


def _polymnist_specs() -> dict[str, NetSpec]:
    # MMVAE+ (and the JNF paper's PolyMNIST runs): Laplace, scale 0.75, no rescaling (equal sizes).
    spec = NetSpec(
        Modality("m0", (3, 28, 28), "laplace", scale=_LAPLACE_SCALE),
        lambda m, k, **o: polymnist_encoder(k, **o),
        lambda m, k, out, **o: polymnist_decoder(k, output=out, **o),
        output="identity",
    )
    return {f"m{i}": replace(spec, modality=replace(spec.modality, name=f"m{i}")) for i in range(5)}


def _mnist_svhn_specs() -> dict[str, NetSpec]:
    # JNF paper, Appendix E.1: Laplace decoders, likelihoods rescaled as in MMVAE / MoPoE.
    return {
        "mnist": NetSpec(
            Modality("mnist", (1, 28, 28), "laplace", scale=_LAPLACE_SCALE, weight=_MNIST_WEIGHT),
            lambda m, k, **o: MNISTEncoder(k, **o),
            lambda m, k, out, **o: MNISTDecoder(k, output=out, **o),
        ),
        "svhn": NetSpec(
            Modality("svhn", (3, 32, 32), "laplace", scale=_LAPLACE_SCALE, weight=1.0),
            lambda m, k, **o: SVHNEncoder(k, **o),
            lambda m, k, out, **o: SVHNDecoder(k, output=out, **o),
        ),
    }


def _mnist_svhn_text_specs() -> dict[str, NetSpec]:
    # Networks: MoPoE. Likelihoods: the permutation-invariant paper (Appendix N) — Laplace with a learned
    # per-pixel scale (started at MoPoE's fixed 0.75), MNIST mean through a sigmoid, SVHN mean unbounded,
    # categorical text; weights MoPoE's ``set_rec_weights`` (the paper re-weights "relative to their dimensions").
    return {
        "mnist": NetSpec(
            Modality("mnist", (1, 28, 28), "laplace", _LAPLACE_SCALE, learn_scale=True, weight=_MNIST_WEIGHT),
            lambda m, k, **o: MNISTEncoder(k, **o),
            lambda m, k, out, **o: MNISTDecoder(k, output=out, **o),
        ),
        "svhn": NetSpec(
            Modality("svhn", (3, 32, 32), "laplace", _LAPLACE_SCALE, learn_scale=True, weight=1.0),
            lambda m, k, **o: MoPoESVHNEncoder(k, **o),
            lambda m, k, out, **o: MoPoESVHNDecoder(k, output=out, **o),
            output="identity",
        ),
        "text": NetSpec(
            Modality("text", (8, 71), "onehot_categorical", weight=_TEXT_WEIGHT),
            _text_encoder,
            lambda m, k, out, **o: TextDecoder(k, output=out, **o),
            shapes=((8,),),  # class indices with num_classes = 71
        ),
    }


def _mhd_specs() -> dict[str, NetSpec]:
    # JNF paper, Appendix E.4: "Gaussian distributions to model all ... decoding distributions"; the scale
    # is MultiVae's default Normal scale 1.0 (the authors' code passes no decoder_dist_params for MHD).
    return {
        "image": NetSpec(
            Modality("image", (1, 28, 28), "normal", scale=1.0, weight=_MHD_SOUND / 784),  # ≈ 5.22
            lambda m, k, **o: MHDImageEncoder(k, channels=m.shape[0], **o),
            lambda m, k, out, **o: MHDImageDecoder(k, channels=m.shape[0], output=out, **o),
            shapes=((3, 28, 28),),  # MultiVae's MHD configs declare 3-channel images
        ),
        "sound": NetSpec(
            Modality("sound", (1, 32, 128), "normal", scale=1.0, weight=1.0),
            lambda m, k, **o: MHDSoundEncoder(k, **o),
            lambda m, k, out, **o: MHDSoundDecoder(k, output=out, **o),
        ),
        "trajectory": NetSpec(
            Modality("trajectory", (200,), "normal", scale=1.0, weight=_MHD_SOUND / 200),  # 20.48
            lambda m, k, **o: MHDTrajectoryEncoder(k, **o),
            lambda m, k, out, **o: MHDTrajectoryDecoder(k, output=out, **o),
        ),
    }


_SPECS: dict[str, Callable[[], dict[str, NetSpec]]] = {
    "polymnist": _polymnist_specs,
    "translated-polymnist": _polymnist_specs,  # JNF Appendix E.3: "similar architectures as in PolyMNIST"
    "mnist-svhn": _mnist_svhn_specs,
    "mnist-svhn-text": _mnist_svhn_text_specs,
    "mhd": _mhd_specs,
}


def check_dataset(dataset: str) -> str:
    """``dataset`` if it is one of :data:`DATASETS`, else an :class:`InputError` listing them."""
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    return dataset


def dataset_modalities(dataset: str) -> tuple[Modality, ...]:
    """The dataset's modalities with the papers' likelihood, scale and reconstruction weight."""
    if check_dataset(dataset) == "toy":
        from ...data.toy import CirclesSquares

        return tuple(CirclesSquares.modalities)
    return tuple(spec.modality for spec in _SPECS[dataset]().values())


def likelihood_settings(dataset: str) -> dict[str, dict]:
    """``{modality: dict(likelihood=, scale=, learn_scale=, weight=)}`` of the dataset's published set-up.

    Build a :class:`~pyro_mmvae.data.Modality` from it with ``Modality(name, shape, **settings[name])``,
    or take the ready ones from :func:`dataset_modalities`.
    """
    return {
        m.name: dict(likelihood=m.likelihood, scale=m.scale, learn_scale=m.learn_scale, weight=m.weight)
        for m in dataset_modalities(dataset)
    }


def _resolve(dataset: str, modality: Modality | str) -> tuple[NetSpec | None, Modality]:
    """``(spec, modality)``: the published spec of the modality (None for ``"toy"``), checked by name and shape."""
    check_dataset(dataset)
    if dataset == "toy":
        if isinstance(modality, str):
            known = {m.name: m for m in dataset_modalities("toy")}
            if modality not in known:
                raise InputError(f"dataset 'toy' has no modality {modality!r}; expected one of {list(known)}")
            return None, known[modality]
        return None, _check_modality_type(modality)
    specs = _SPECS[dataset]()
    name = modality if isinstance(modality, str) else _check_modality_type(modality).name
    if name not in specs:
        raise InputError(f"dataset {dataset!r} has no modality {name!r}; its networks take {list(specs)}")
    spec = specs[name]
    if isinstance(modality, str):
        return spec, spec.modality
    if modality.shape not in spec.accepted_shapes:
        raise InputError(
            f"dataset {dataset!r}, modality {name!r}: the networks take event shape "
            f"{' or '.join(map(str, spec.accepted_shapes))}, got {modality.shape}"
        )
    return spec, modality


def _check_modality_type(modality) -> Modality:
    if not isinstance(modality, Modality):
        raise InputTypeError(f"modality must be a Modality or a modality name, got {type(modality).__name__}")
    return modality


def encoder(dataset: str, modality: Modality | str, out_dim: int, **options) -> nn.Module:
    """The dataset's encoder for ``modality``: ``(*lead, *shape) → (*lead, out_dim)``.

    ``out_dim`` is what the consumer reads: ``2D`` for flow experts and PoE/MoE/MoPoE experts (mean and
    log-scale), the feature size E for the set guides, the head size for the joint guide. ``options``
    go to the network's constructor (e.g. ``batch_norm=False`` for MHD, ``num_hidden_layers=2`` for the
    MNIST MLPs; for ``"toy"``, :func:`~pyro_mmvae.nn.networks.default_encoder`'s ``hidden`` and ``arch``).
    """
    spec, modality = _resolve(dataset, modality)
    out_dim = check_int(out_dim, "out_dim", minimum=1)
    if spec is None:
        return default_encoder(modality, out_dim, **options)
    return spec.encoder(modality, out_dim, **options)


def decoder(
    dataset: str, modality: Modality | str, in_dim: int, param_shape: Iterable[int] | None = None, **options
) -> nn.Module:
    """The dataset's decoder for ``modality``: ``(*lead, in_dim) → (*lead, *param_shape)``.

    ``param_shape`` defaults to the likelihood's (:attr:`~pyro_mmvae.distributions.likelihoods.Likelihood.param_shape`:
    the modality's shape, ``(*shape, K)`` for class indices); another shape raises :class:`InputError`.
    ``options`` go to the network's constructor as in :func:`encoder`; ``output="sigmoid"`` or
    ``"identity"`` overrides the output activation (default: the paper's for Normal/Laplace, none otherwise).
    """
    from ...distributions.likelihoods import Likelihood

    spec, modality = _resolve(dataset, modality)
    in_dim = check_int(in_dim, "in_dim", minimum=1)
    shape = Likelihood(modality).param_shape
    if param_shape is not None:
        check_output_shape(f"the {modality.likelihood!r} likelihood of modality {modality.name!r}", shape, param_shape)
    if spec is None:
        return default_decoder(modality, in_dim, shape, **options)
    default_output = spec.output if modality.likelihood in ("normal", "laplace") else "identity"
    net = spec.decoder(modality, in_dim, options.pop("output", default_output), **options)
    check_output_shape(f"the {dataset!r} decoder of modality {modality.name!r}", net.out_shape, shape)
    return net


def _names_and_modalities(dataset: str, modalities: Iterable[Modality | str]) -> list[Modality]:
    return [_resolve(dataset, m)[1] for m in modalities]


def encoders(dataset: str, modalities: Iterable[Modality | str], out_dim: int, **options) -> dict[str, nn.Module]:
    """``{name: encoder(dataset, m, out_dim, **options)}`` for the modalities, in their order."""
    return {m.name: encoder(dataset, m, out_dim, **options) for m in _names_and_modalities(dataset, modalities)}


def decoders(
    dataset: str,
    modalities: Iterable[Modality | str],
    in_dim: int,
    param_shapes: Mapping[str, object] | None = None,
    **options,
) -> dict[str, nn.Module]:
    """``{name: decoder(dataset, m, in_dim, shape, **options)}`` for the modalities, in their order.

    ``param_shapes`` optionally maps names to parameter shapes or to objects with a ``param_shape``
    (e.g. a model's ``likelihoods``, :class:`~pyro_mmvae.distributions.likelihoods.Likelihood` modules);
    modalities it omits get their likelihood's shape.
    """
    given = dict(param_shapes or {})
    out = {}
    for m in _names_and_modalities(dataset, modalities):
        shape = given.get(m.name)
        shape = getattr(shape, "param_shape", shape)
        out[m.name] = decoder(dataset, m, in_dim, shape, **options)
    unknown = sorted(set(given) - set(out))
    if unknown:
        raise InputError(f"param_shapes given for unknown modalities {unknown}; the modalities are {list(out)}")
    return out


__all__ = [
    "DATASETS",
    "EventNet",
    "NetSpec",
    "PreActResnetBlock",
    "check_dataset",
    "count_parameters",
    "dataset_modalities",
    "decoder",
    "decoders",
    "encoder",
    "encoders",
    "likelihood_settings",
    "MHDImageDecoder",
    "MHDImageEncoder",
    "MHDSoundDecoder",
    "MHDSoundEncoder",
    "MHDTrajectoryDecoder",
    "MHDTrajectoryEncoder",
    "MNISTDecoder",
    "MNISTEncoder",
    "MoPoESVHNDecoder",
    "MoPoESVHNEncoder",
    "PolyMNISTDecoder",
    "PolyMNISTEncoder",
    "PolyMNISTConvDecoder",
    "PolyMNISTConvEncoder",
    "SVHNDecoder",
    "SVHNEncoder",
    "TextDecoder",
    "TextEncoder",
]
