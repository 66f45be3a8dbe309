"""The papers' per-dataset architectures (:mod:`pyro_mmvae.nn.architectures`): shapes over leading
dimensions, likelihood support, the registry's errors and settings, parameter counts against the
published layer lists, and that the library's models and guides take them unchanged."""

import math

import pyro
import pytest
import torch

from pyro_mmvae.data import Modality, MultimodalBatch
from pyro_mmvae.distributions.likelihoods import Likelihood
from pyro_mmvae.errors import InputError, InputTypeError
from pyro_mmvae.guides import (
    FlowExpertGuide,
    JointGuide,
    MoEGuide,
    MoPoEGuide,
    PoEGuide,
    SelfAttentionGuide,
    SumPoolingGuide,
)
from pyro_mmvae.infer.elbo import BetaELBO
from pyro_mmvae.models import MultimodalVAE
from pyro_mmvae.nn import architectures as arch
from pyro_mmvae.nn.projectors import FrozenProjector

CONTRACT = {  # the modalities the data helpers' datasets expose (issue 10's shared contract)
    "polymnist": {f"m{i}": ((3, 28, 28), "laplace") for i in range(5)},
    "translated-polymnist": {f"m{i}": ((3, 28, 28), "laplace") for i in range(5)},
    "mnist-svhn": {"mnist": ((1, 28, 28), "laplace"), "svhn": ((3, 32, 32), "laplace")},
    "mnist-svhn-text": {
        "mnist": ((1, 28, 28), "laplace"),
        "svhn": ((3, 32, 32), "laplace"),
        "text": ((8, 71), "onehot_categorical"),
    },
    "mhd": {"image": ((1, 28, 28), "normal"), "sound": ((1, 32, 128), "normal"), "trajectory": ((200,), "normal")},
}
PAIRS = [(ds, m.name) for ds in arch.DATASETS for m in arch.dataset_modalities(ds)]
# one PolyMNIST modality stands for the five identical ones, and Translated PolyMNIST shares the nets
SHAPE_PAIRS = [p for p in PAIRS if p[0] != "translated-polymnist" and p[1] not in ("m1", "m2", "m3", "m4")]


def _modality(dataset: str, name: str) -> Modality:
    return {m.name: m for m in arch.dataset_modalities(dataset)}[name]


def random_data(m: Modality, lead, generator) -> torch.Tensor:
    """Data of modality ``m`` with leading shape ``lead`` in the likelihood's support."""
    if m.likelihood == "onehot_categorical":
        idx = torch.randint(0, m.shape[-1], (*lead, *m.shape[:-1]), generator=generator)
        return torch.nn.functional.one_hot(idx, m.shape[-1]).float()
    if m.likelihood == "categorical":
        return torch.randint(0, m.num_classes, (*lead, *m.shape), generator=generator)
    x = torch.rand(*lead, *m.shape, generator=generator)
    return (x > 0.5).float() if m.likelihood == "bernoulli" else x


def random_batch(modalities, batch_size: int, seed: int = 0) -> MultimodalBatch:
    g = torch.Generator().manual_seed(seed)
    return MultimodalBatch({m.name: random_data(m, (batch_size,), g) for m in modalities})


# ------------------------------------------------------------------ shapes and likelihoods
@pytest.mark.parametrize("dataset,name", SHAPE_PAIRS, ids=[f"{d}-{n}" for d, n in SHAPE_PAIRS])
def test_shapes_over_leading_dims_and_finite_log_likelihood(dataset, name):
    torch.manual_seed(0)
    m = _modality(dataset, name)
    enc, dec = arch.encoder(dataset, m, 6), arch.decoder(dataset, m, 5)
    x = random_data(m, (2, 3), torch.Generator().manual_seed(1))
    assert enc(x).shape == (2, 3, 6) and enc(x[0]).shape == (3, 6)
    z = torch.randn(2, 3, 5)
    params = dec(z)
    assert params.shape == (2, 3, *Likelihood(m).param_shape) and dec(z[0]).shape == params.shape[1:]
    log_p = Likelihood(m)(params).log_prob(x)
    assert log_p.shape == (2, 3) and torch.isfinite(log_p).all()
    (enc(x).square().sum() + log_p.sum()).backward()  # every layer takes part: no dead or unused parameter
    unused = [n for n, p in [*enc.named_parameters(), *dec.named_parameters()] if p.grad is None or not p.grad.any()]
    assert not unused


def test_the_leading_dims_do_not_mix_rows():
    """Row i of a (2, 3)-batched call equals the call on row i alone (eval mode: BatchNorm uses its running stats)."""
    m = _modality("mhd", "sound")
    dec = arch.decoder("mhd", m, 4).eval()
    z = torch.randn(2, 3, 4)
    assert torch.allclose(dec(z)[1, 2], dec(z[1, 2:3])[0], atol=1e-6)


@pytest.mark.parametrize(
    "modality,family",
    [
        (Modality("mnist", (1, 28, 28), "bernoulli"), "bernoulli"),
        (Modality("text", (8,), "categorical", num_classes=71), "categorical"),
        (Modality("svhn", (3, 32, 32), "normal", scale=0.5), "normal"),
    ],
    ids=["bernoulli", "categorical-text", "normal"],
)
def test_other_likelihood_families_are_supported(modality, family):
    """Families the papers do not use for these modalities still get a finite log-likelihood."""
    enc, dec = arch.encoder("mnist-svhn-text", modality, 4), arch.decoder("mnist-svhn-text", modality, 3)
    x = random_data(modality, (5,), torch.Generator().manual_seed(0))
    assert enc(x).shape == (5, 4)
    log_p = Likelihood(modality)(dec(torch.randn(5, 3))).log_prob(x)
    assert Likelihood(modality).kind == family and log_p.shape == (5,) and torch.isfinite(log_p).all()


def test_output_activation_follows_the_paper_and_the_likelihood():
    torch.manual_seed(0)
    z = 10 * torch.randn(64, 20)  # large inputs drive unbounded outputs out of [0, 1]
    laplace = arch.decoder("mnist-svhn", "mnist", 20)(z)  # JNF Table 6: Sigmoid
    assert laplace.min() >= 0 and laplace.max() <= 1
    unbounded = arch.decoder("polymnist", "m0", 20)(z)  # MMVAE+: no output activation
    assert unbounded.min() < 0 or unbounded.max() > 1
    logits = arch.decoder("mnist-svhn", Modality("mnist", (1, 28, 28), "bernoulli"), 20)(z)
    assert logits.min() < 0  # Bernoulli logits, no sigmoid


# ------------------------------------------------------------------ the registry
def test_datasets_and_contract_modalities():
    assert set(arch.DATASETS) == {"toy", *CONTRACT}
    for dataset, expected in CONTRACT.items():
        got = {m.name: (m.shape, m.likelihood) for m in arch.dataset_modalities(dataset)}
        assert got == expected, dataset
    assert [m.name for m in arch.dataset_modalities("toy")] == ["square", "circle"]


def test_likelihood_settings_record_the_papers_numbers():
    ms = arch.likelihood_settings("mnist-svhn")
    assert ms["mnist"]["weight"] == pytest.approx(3072 / 784) and ms["svhn"]["weight"] == 1.0
    assert ms["mnist"]["likelihood"] == "laplace" and ms["mnist"]["scale"] == 0.75
    mst = arch.likelihood_settings("mnist-svhn-text")
    assert mst["text"] == dict(likelihood="onehot_categorical", scale=1.0, learn_scale=False, weight=384.0)
    assert mst["svhn"]["learn_scale"] and mst["mnist"]["weight"] == pytest.approx(3.918, abs=1e-3)
    poly = arch.likelihood_settings("polymnist")
    assert all(s == dict(likelihood="laplace", scale=0.75, learn_scale=False, weight=1.0) for s in poly.values())
    mhd = arch.likelihood_settings("mhd")
    assert {n: s["weight"] for n, s in mhd.items()} == pytest.approx(
        {"image": 4096 / 784, "sound": 1.0, "trajectory": 20.48}
    )
    assert all(s["likelihood"] == "normal" for s in mhd.values())
    # the settings rebuild the modalities the registry hands out
    for m in arch.dataset_modalities("mhd"):
        assert Modality(m.name, m.shape, **mhd[m.name]) == m


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: arch.encoder("cifar", "m0", 4), r"unknown dataset 'cifar'; expected one of \['toy'"),
        (lambda: arch.encoder("polymnist", "m7", 4), r"no modality 'm7'; its networks take \['m0'"),
        (
            lambda: arch.encoder("mnist-svhn", Modality("svhn", (3, 28, 28), "laplace"), 4),
            r"'svhn': the networks take event shape \(3, 32, 32\), got \(3, 28, 28\)",
        ),
        (
            lambda: arch.decoder("mhd", "sound", 4, param_shape=(1, 32, 64)),
            r"produces parameters of shape \(1, 32, 128\), but shape \(1, 32, 64\) was asked for",
        ),
        (
            lambda: arch.decoder("mnist-svhn-text", Modality("text", (8,), "categorical", num_classes=5), 4),
            r"produces parameters of shape \(8, 71\), but shape \(8, 5\)",
        ),
        (
            lambda: arch.encoder("mnist-svhn-text", Modality("text", (8,), "categorical", num_classes=5), 4),
            r"read 71 symbols, got num_classes=5",
        ),
        (lambda: arch.encoder("mhd", "image", 0), "out_dim"),
        (lambda: arch.decoders("mhd", ["image"], 4, {"sound": (1, 32, 128)}), r"unknown modalities \['sound'\]"),
        (lambda: arch.encoder("toy", "spiral", 4), r"no modality 'spiral'"),
    ],
    ids=[
        "dataset",
        "name",
        "shape",
        "param-shape",
        "text-classes-decoder",
        "text-classes-encoder",
        "out-dim",
        "param-shapes-keys",
        "toy-name",
    ],
)
def test_bad_requests_raise_input_errors_naming_expected_and_received(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_non_modality_argument_and_bad_input_shape():
    with pytest.raises(InputTypeError, match="Modality or a modality name"):
        arch.encoder("mhd", 3, 4)
    with pytest.raises(
        InputError, match=r"MHD trajectory encoder: expected input of shape \(\*lead, 200\), got \(4, 100\)"
    ):
        arch.encoder("mhd", "trajectory", 8)(torch.zeros(4, 100))


def test_convenience_dicts_keep_order_and_take_likelihood_modules():
    mods = arch.dataset_modalities("mnist-svhn-text")
    encs = arch.encoders("mnist-svhn-text", mods, 8)
    decs = arch.decoders("mnist-svhn-text", [m.name for m in mods], 3, {m.name: Likelihood(m) for m in mods})
    assert list(encs) == list(decs) == ["mnist", "svhn", "text"]
    assert isinstance(encs["text"], arch.TextEncoder) and isinstance(decs["svhn"], arch.MoPoESVHNDecoder)
    assert all(e.out_dim == 8 for e in encs.values())  # what FrozenProjector reads
    assert FrozenProjector(arch.encoder("mhd", "trajectory", 10)).out_dim == 10


def has_bn(net) -> bool:
    return any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in net.modules())


def test_options_reach_the_networks():
    assert has_bn(arch.encoder("mhd", "sound", 4)) and not has_bn(arch.encoder("mhd", "sound", 4, batch_norm=False))
    plain = arch.decoders("mhd", ["image", "trajectory"], 3, batch_norm=False)
    assert not any(has_bn(net) for net in plain.values())
    z = torch.randn(5, 3)  # without BatchNorm a row's output no longer depends on the other rows in training mode
    assert torch.allclose(plain["trajectory"](z)[:2], plain["trajectory"](z[:2]), atol=1e-6)
    one, two = arch.encoder("mnist-svhn", "mnist", 4), arch.encoder("mnist-svhn", "mnist", 4, num_hidden_layers=2)
    assert arch.count_parameters(two) - arch.count_parameters(one) == 400 * 400 + 400
    unbounded = arch.decoder("mnist-svhn", "mnist", 3, output="identity")(10 * torch.randn(32, 3))
    assert unbounded.min() < 0 or unbounded.max() > 1


def test_toy_maps_to_the_default_mlps():
    m = Modality("v", (5,), "normal")
    assert type(arch.encoder("toy", m, 4)).__name__ == "FlatEncoder"
    assert arch.decoder("toy", m, 3)(torch.zeros(7, 2, 3)).shape == (7, 2, 5)


# ------------------------------------------------------------------ parameter counts
def _linear(i, o, bias=True):
    return i * o + (o if bias else 0)


def _conv(i, o, k, bias=True):
    return i * o * math.prod(k if isinstance(k, tuple) else (k, k)) + (o if bias else 0)


def _block(i, o):  # MMVAE+ ResnetBlock: two 3×3 convs through min(i, o) channels, 1×1 bias-free shortcut
    h = min(i, o)
    return _conv(i, h, 3) + _conv(h, o, 3) + (0 if i == o else _conv(i, o, 1, bias=False))


def _bn(c):
    return 2 * c


PUBLISHED = {  # (dataset, modality, D): encoder and decoder counts from the reference layer lists, out = 2D
    ("mnist-svhn", "mnist", 20): (_linear(784, 400) + 2 * _linear(400, 20), _linear(20, 400) + _linear(400, 784)),
    ("mnist-svhn", "svhn", 20): (
        _conv(3, 32, 4) + _conv(32, 64, 4) + _conv(64, 128, 4) + 2 * _conv(128, 20, 4),
        _conv(20, 128, 4) + _conv(128, 64, 4) + _conv(64, 32, 4) + _conv(32, 3, 4),
    ),
    ("polymnist", "m0", 190): (
        _conv(3, 64, 3) + _block(64, 64) + _block(64, 128) + _block(128, 256) + 2 * _linear(256 * 49, 190),
        _linear(190, 256 * 49) + _block(256, 128) + _block(128, 64) + _block(64, 64) + _conv(64, 3, 3),
    ),
    ("mnist-svhn-text", "svhn", 20): (
        _conv(3, 32, 4) + _conv(32, 64, 4) + _conv(64, 64, 4) + _conv(64, 128, 4) + 2 * _linear(128, 20),
        _linear(20, 128) + _conv(128, 64, 4) + _conv(64, 64, 4) + _conv(64, 32, 4) + _conv(32, 3, 4),
    ),
    ("mnist-svhn-text", "text", 20): (
        _conv(71, 128, (1,)) + _conv(128, 128, (4,)) + _conv(128, 128, (4,)) + 2 * _linear(128, 20),
        _linear(20, 128) + 2 * _conv(128, 128, (4,)) + _conv(128, 71, (1,)),
    ),
    ("mhd", "image", 64): (
        sum(_conv(i, o, 4) + _bn(o) for i, o in [(1, 128), (128, 256), (256, 512), (512, 1024)])
        + 2 * _linear(1024, 64),
        _linear(64, 1024 * 16) + _conv(1024, 512, 3) + _bn(512) + _conv(512, 256, 3) + _bn(256) + _conv(256, 1, 3),
    ),
    ("mhd", "sound", 64): (  # bias-free convs
        sum(_conv(i, o, k, False) + _bn(o) for i, o, k in [(1, 128, (1, 128)), (128, 128, (4, 1)), (128, 256, (4, 1))])
        + 2 * _linear(2048, 64),
        _linear(64, 2048)
        + _bn(2048)
        + sum(_conv(i, 128, (4, 1), False) + _bn(128) for i in (256, 128))
        + _conv(128, 1, (1, 128), False),
    ),
    ("mhd", "trajectory", 64): (
        _linear(200, 512) + 2 * _linear(512, 512) + 3 * _bn(512) + 2 * _linear(512, 64),
        _linear(64, 512) + 2 * _linear(512, 512) + 3 * _bn(512) + _linear(512, 200),
    ),
}


@pytest.mark.parametrize("key", list(PUBLISHED), ids=[f"{d}-{m}" for d, m, _ in PUBLISHED])
def test_parameter_counts_match_the_published_layer_lists(key):
    dataset, name, d = key
    enc, dec = arch.encoder(dataset, name, 2 * d), arch.decoder(dataset, name, d)
    assert (arch.count_parameters(enc), arch.count_parameters(dec)) == PUBLISHED[key]


# ------------------------------------------------------------------ the library's models and guides take them
@pytest.mark.parametrize("dataset", list(CONTRACT))
def test_joint_vae_trains_on_a_repeated_batch(dataset):
    """MultimodalVAE + JointGuide with the dataset's networks: a few Adam steps lower the β-ELBO loss.

    The loss is compared before and after training under the same seed (same noise ε), so the
    difference is the parameters' doing."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    mods = list(arch.dataset_modalities(dataset))  # the papers' likelihoods, learned scales included
    d, head = 4, 8
    if dataset in ("polymnist", "translated-polymnist"):
        mods = mods[:2]  # the five modalities are alike; two keep the test fast
    model = MultimodalVAE(mods, d, decoders=arch.decoders(dataset, mods, d))
    guide = JointGuide(mods, d, head_dim=head, merge_hidden=(16,), heads=arch.encoders(dataset, mods, head))
    batch = random_batch(mods, 2)  # 2 rows: the least BatchNorm takes in training mode
    loss_fn = BetaELBO()(model, guide)

    def seeded_loss():
        pyro.set_rng_seed(1)
        return loss_fn(batch)

    opt = torch.optim.Adam(loss_fn.parameters(), lr=1e-3, foreach=True)
    before = seeded_loss().item()
    for _ in range(3):
        opt.zero_grad()
        loss = loss_fn(batch)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    after = seeded_loss().item()
    assert math.isfinite(before) and after < before - 0.002 * abs(before)


def _check_posterior(q, b, d):
    z = q.rsample()
    assert q.batch_shape == (b,) and q.event_shape == (d,) and z.shape == (b, d)
    assert torch.isfinite(q.log_prob(z)).all()


@pytest.mark.parametrize("dataset", list(CONTRACT))
def test_sumpooling_and_flow_experts_take_the_encoders(dataset):
    torch.manual_seed(0)
    mods = list(arch.dataset_modalities(dataset))
    if dataset in ("polymnist", "translated-polymnist"):
        mods = mods[:2]
    d, b = 3, 4
    batch = random_batch(mods, b)
    feature = 8
    sumpool = SumPoolingGuide(
        mods, d, feature_dim=feature, width=8, pooled_dim=8, encoders=arch.encoders(dataset, mods, feature)
    )
    _check_posterior(sumpool.posterior(batch, subset=[mods[0].name]), b, d)
    experts = FlowExpertGuide(mods, d, flow_hidden=(8,), encoders=arch.encoders(dataset, mods, 2 * d))
    for name in experts.names:
        _check_posterior(experts.posterior(batch, name), b, d)


@pytest.mark.parametrize(
    "build",
    [
        lambda mods, d, e: PoEGuide(mods, d, encoders=e(2 * d)),
        lambda mods, d, e: MoEGuide(mods, d, encoders=e(2 * d)),
        lambda mods, d, e: MoPoEGuide(mods, d, encoders=e(2 * d)),
        lambda mods, d, e: SelfAttentionGuide(mods, d, feature_dim=8, width=8, dim=8, encoders=e(8)),
    ],
    ids=["poe", "moe", "mopoe", "selfattention"],
)
def test_the_other_aggregation_guides_take_the_encoders(build):
    torch.manual_seed(0)
    mods = list(arch.dataset_modalities("mnist-svhn-text"))
    d, b = 3, 4
    guide = build(mods, d, lambda k: arch.encoders("mnist-svhn-text", mods, k))
    batch = random_batch(mods, b)
    _check_posterior(guide.posterior(batch), b, d)
    _check_posterior(guide.posterior(batch, subset=["text"]), b, d)


@pytest.mark.parametrize("nets", ["resnet", "mopoe"])
def test_polymnist_network_choices_and_width(nets):
    m = arch.dataset_modalities("polymnist")[0]
    options = {"nets": nets} if nets == "mopoe" else {"nets": nets, "base_channels": 8}
    enc, dec = arch.encoder("polymnist", m, 10, **options), arch.decoder("polymnist", m, 6, **options)
    assert enc(torch.rand(2, 3, 3, 28, 28)).shape == (2, 3, 10)
    assert dec(torch.randn(2, 3, 6)).shape == (2, 3, 3, 28, 28)
    if nets == "resnet":  # the width option scales every layer: 8 channels give far fewer parameters than 64
        assert arch.count_parameters(enc) < arch.count_parameters(arch.encoder("polymnist", m, 10)) / 8
    with pytest.raises(InputError, match="nets"):
        arch.encoder("polymnist", m, 10, nets="vgg")
