"""A user's plain Pyro function is a first-class model: trained, checkpointed, generated from and sampled."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_mmvae.data import CirclesSquares, Modality, MultimodalBatch, MultimodalDataset
from pyro_mmvae.experiments import toy
from pyro_mmvae.guides import JointGuide, UnimodalGaussianGuide
from pyro_mmvae.infer import BetaELBO, conditional_generate
from pyro_mmvae.metrics.likelihood import log_likelihood
from pyro_mmvae.models import FunctionModel, UnregisteredParameterError, as_model, multimodal_model
from pyro_mmvae.nn import FlatDecoder
from pyro_mmvae.train import fit

D = 2
MODS = (
    Modality("vec", (3,), likelihood="normal", scale=0.5),
    Modality("img", (1, 4, 4), likelihood="bernoulli"),
    Modality("label", (), likelihood="categorical", num_classes=3),
)


def data(n=96, seed=0, missing=0.3):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, D, generator=g)
    vec = z @ torch.randn(D, 3, generator=g) + 0.5 * torch.randn(n, 3, generator=g)
    img = (torch.rand(n, 1, 4, 4, generator=g) < torch.sigmoid(z[:, :1, None, None])).float()
    label = (z[:, 0] > 0).long() + (z[:, 1] > 1).long()
    present = {m.name: torch.rand(n, generator=g) > missing for m in MODS}
    present["vec"] |= ~(present["img"] | present["label"])  # never every modality missing in a row
    return MultimodalDataset({"vec": vec, "img": img, "label": label}, present=present, modalities=MODS)


def make_program():
    """A plain Pyro function with its own decoders, registered the usual Pyro way."""
    torch.manual_seed(0)
    decoders = nn.ModuleDict({"vec": nn.Linear(D, 3), "img": nn.Linear(D, 16), "label": nn.Linear(D, 3)})

    def model(batch, beta=1.0):
        pyro.module("decoders", decoders)
        with pyro.plate("data", batch.batch_size):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1).expand([batch.batch_size]))
            likelihoods = {
                "vec": dist.Normal(decoders["vec"](z), 0.5).to_event(1),
                "img": dist.Bernoulli(logits=decoders["img"](z).reshape(*z.shape[:-1], 1, 4, 4)).to_event(3),
                "label": dist.Categorical(logits=decoders["label"](z)),
            }
            for name, lik in likelihoods.items():
                with poutine.mask(mask=batch.present[name]):
                    pyro.sample(f"x_{name}", lik, obs=batch.data[name])

    return model, decoders


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def decoder_tensors(decoders):
    return {k: v.detach().clone() for k, v in decoders.state_dict().items()}


@pytest.mark.parametrize("declared", ["attribute", "decorator", "guide"])
def test_fit_trains_every_decoder_parameter_of_a_function_model(declared):
    program, decoders = make_program()
    if declared == "attribute":
        program.modalities = MODS
        model = program
    elif declared == "decorator":
        model = multimodal_model(MODS, latent_dim=D)(program)
    else:
        model = program  # modalities taken from the guide
    guide = JointGuide(MODS, D, head_dim=8, hidden=(16,), merge_hidden=(16,))
    before = decoder_tensors(decoders)
    res = fit(model, guide, data(), BetaELBO(), epochs=3, batch_size=32, lr=1e-2, progress=False)
    after = decoder_tensors(decoders)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"decoder tensors left untrained: {unchanged}"
    assert res.train_loss[-1] < res.train_loss[0]


def test_the_plain_torch_recipe_trains_the_decoders_too():
    program, decoders = make_program()
    train = data()
    model = FunctionModel(program, MODS).bind(train.full)
    guide = JointGuide(MODS, D, head_dim=8, hidden=(16,), merge_hidden=(16,))
    loss_fn = BetaELBO()(model, guide)
    decoder_ids = {id(p) for p in decoders.parameters()}
    assert decoder_ids <= {id(p) for p in loss_fn.parameters()}  # a bare function would give none of them
    before = decoder_tensors(decoders)
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        loss_fn(train.full).backward()
        optimizer.step()
    assert all(not torch.equal(before[k], v) for k, v in decoder_tensors(decoders).items())


def test_checkpoints_hold_the_decoders_and_resume_exactly(tmp_path):
    def run(run_dir, stop=None, resume=False):
        pyro.clear_param_store()
        program, decoders = make_program()
        model = FunctionModel(program, MODS, latent_dim=D)
        guide = JointGuide(MODS, D, head_dim=8, hidden=(16,), merge_hidden=(16,))
        callbacks = []
        if stop is not None:

            def interrupt(row):
                if row["epoch"] == stop:
                    raise KeyboardInterrupt

            callbacks.append(interrupt)
        fit(
            model,
            guide,
            data(),
            BetaELBO(),
            epochs=4,
            batch_size=32,
            lr=1e-2,
            progress=False,
            run_dir=run_dir,
            resume=resume,
            callbacks=callbacks,
        )
        return decoder_tensors(decoders), model

    straight, model = run(tmp_path / "a")
    assert any(k.startswith("program_parameters.decoders") for k in model.state_dict())
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop=2)
    resumed, _ = run(tmp_path / "b", resume=True)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def test_generation_and_subset_posteriors_read_the_program():
    program, decoders = make_program()
    train = data()
    batch = train.full[:8]
    model = as_model(program, JointGuide(MODS, D), batch)
    prior = model.prior_dist()
    z = torch.randn(5, D)
    torch.testing.assert_close(prior.log_prob(z), dist.Normal(0.0, 1.0).log_prob(z).sum(-1))
    zb = torch.randn(4, 8, D)
    means = model.reconstruct(zb)
    torch.testing.assert_close(means["vec"], decoders["vec"](zb))
    torch.testing.assert_close(means["img"], torch.sigmoid(decoders["img"](zb)).reshape(4, 8, 1, 4, 4))
    assert model.sample_prior(7).shape == (7, D)
    assert model.latent_dim == D
    experts = UnimodalGaussianGuide(MODS, D)
    joint = JointGuide(MODS, D)
    full = MultimodalBatch(dict(batch.data))  # every modality present
    out = conditional_generate(program, full, ["vec"], joint_guide=joint, experts=experts, num_samples=3)
    assert out.method == "expert" and out.generated["img"].shape == (3, 8, 1, 4, 4)
    out = conditional_generate(
        program, full, ["vec", "img"], joint_guide=joint, experts=experts, num_samples=4, mcmc_warmup=20, seed=0
    )
    assert out.method == "mcmc" and out.z.shape == (4, 8, D) and torch.isfinite(out.z).all()
    assert set(out.generated) == {"label"}


def test_importance_sampled_likelihood_accepts_a_function_model():
    program, _ = make_program()
    batch = data().full
    guide = JointGuide(MODS, D)
    ll = log_likelihood(program, guide, batch, num_particles=4)
    assert ll.shape == (batch.batch_size,) and torch.isfinite(ll).all()


def test_the_contract_is_checked():
    program, _ = make_program()
    with pytest.raises(TypeError, match="declares no modalities"):
        as_model(program)
    with pytest.raises(ValueError, match="latent_dim must be an integer >= 1"):
        FunctionModel(program, MODS, latent_dim=0)
    batch = data().full
    model = FunctionModel(program, MODS).bind(batch)
    late = nn.Linear(D, 3)

    def grows(batch, beta=1.0):
        program(batch, beta)
        pyro.module("late", late)

    model.fn = grows
    with pytest.raises(UnregisteredParameterError, match="late"):
        model(batch)

    def raw_param(batch, beta=1.0):
        pyro.param("w", torch.zeros(3))
        program(batch, beta)

    with pytest.raises(TypeError, match="pyro.param site 'w'"):
        FunctionModel(raw_param, MODS).bind(batch)


def test_toy_evaluation_accepts_a_bare_function(tmp_path):
    torch.manual_seed(0)
    decoders = nn.ModuleDict({n: FlatDecoder(D, (1, 32, 32), hidden=(16,)) for n in ("square", "circle")})

    def model(batch, beta=1.0):
        pyro.module("decoders", decoders)
        with pyro.plate("data", batch.batch_size):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1).expand([batch.batch_size]))
            for name, decoder in decoders.items():
                with poutine.mask(mask=batch.present[name]):
                    pyro.sample(f"x_{name}", dist.Bernoulli(logits=decoder(z)).to_event(3), obs=batch.data[name])

    model.modalities = CirclesSquares.modalities
    test = CirclesSquares("test", size=100, seed=0)
    guide = JointGuide(CirclesSquares.modalities, D, head_dim=8, hidden=(16,), merge_hidden=(16,))
    metrics = toy.evaluate_joint(model, guide, test, tmp_path, torch.device("cpu"), num_plot=50, batch_size=50)
    assert set(metrics["reconstruction"]) == {"square", "circle"} and -1e5 < metrics["test_elbo"] < 0
    assert (tmp_path / "reconstructions.png").exists()


def test_a_subset_posterior_takes_its_prior_from_the_function_model():
    from pyro_mmvae.infer import SubsetPosterior

    program, _ = make_program()
    batch = MultimodalBatch(dict(data().full[:6].data))
    experts = UnimodalGaussianGuide(MODS, D)
    model = as_model(program, experts, batch)
    target = SubsetPosterior.from_guide(experts, batch, ["vec", "img"], model)
    by_hand = SubsetPosterior.from_guide(experts, batch, ["vec", "img"], dist.Normal(torch.zeros(D), 1.0).to_event(1))
    z = torch.randn(3, 6, D)
    torch.testing.assert_close(target.log_prob(z), by_hand.log_prob(z))


def test_a_stale_param_store_entry_is_refused_not_silently_trained():
    first, _ = make_program()
    batch = data().full
    FunctionModel(first, MODS).bind(batch)  # registers "decoders$$$..." in Pyro's global param store
    second, _ = make_program()  # new networks under the same name: the store still holds the old tensors
    with pytest.raises(ValueError, match="param store already holds 'decoders\\$\\$\\$"):
        FunctionModel(second, MODS).bind(batch)
    pyro.clear_param_store()
    assert FunctionModel(second, MODS).bind(batch).bound
