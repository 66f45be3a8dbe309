"""Bad input at every entry point: the library's error type, and a message naming the culprit.

Each case asserts the exception type and that the message names the modality / argument / file and,
where sensible, the expected and the received value. The entry points reached: the batch
validation itself, ``fit``, the objectives, guides' ``posterior``, conditional generation, the
likelihood metric, subset posteriors, the sampler, model/guide construction, ``FitConfig``, run-folder
loading and the command line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyro_mmvae.cli import main
from pyro_mmvae.data import Modality, MultimodalBatch, MultimodalDataset
from pyro_mmvae.data.validation import validate_batch
from pyro_mmvae.errors import InputError, InputTypeError, RunFolderError, UnknownModalityError
from pyro_mmvae.experiments.jnf_pipeline import load_toy_run
from pyro_mmvae.guides import JointGuide
from pyro_mmvae.infer import conditional
from pyro_mmvae.infer.elbo import BetaELBO
from pyro_mmvae.infer.masked import MaskedELBO
from pyro_mmvae.infer.mcmc import BatchedHMC, sample_subset_posterior
from pyro_mmvae.infer.subset_posterior import SubsetPosterior
from pyro_mmvae.metrics.likelihood import log_likelihood
from pyro_mmvae.models import MultimodalVAE, PrivateLatentVAE
from pyro_mmvae.train import NonFiniteLossError, fit
from pyro_mmvae.train.checkpoint import load_checkpoint
from tests.common import small_batch, small_modalities

B = 4


def pair(seed: int = 0):
    torch.manual_seed(seed)
    mods = small_modalities()
    model = MultimodalVAE(mods, latent_dim=2, hidden=(8,))
    guide = JointGuide(mods, latent_dim=2, head_dim=4, merge_hidden=(8,), hidden=(8,))
    return model, guide


def batch_with(**changes) -> MultimodalBatch:
    """``small_batch(4)`` with some modality tensors (``name=tensor``) or masks (``present_name=mask``) replaced."""
    b = small_batch(B)
    data, present = dict(b.data), dict(b.present)
    for key, value in changes.items():
        if key.startswith("present_"):
            present[key[len("present_") :]] = value
        else:
            data[key] = value
    return MultimodalBatch(data, present)


def raises(error, words, fn, *args, **kwargs):
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return info.value


def check(batch):
    return validate_batch(batch, small_modalities())


# ---------------------------------------------------------------------- data


DATA_CASES = {
    # name: (batch builder, error, words the message must contain)
    "numpy-array": (
        lambda: batch_with(a=np.zeros((B, 5), np.float32)),
        InputTypeError,
        ["'a'", "ndarray", "torch.as_tensor"],
    ),
    "int64-image": (
        lambda: batch_with(b=torch.ones(B, 1, 4, 4, dtype=torch.int64)),
        InputTypeError,
        ["'b'", "floating", "torch.int64"],
    ),
    "uint8-image": (
        lambda: batch_with(b=torch.ones(B, 1, 4, 4, dtype=torch.uint8)),
        InputTypeError,
        ["'b'", "torch.uint8"],
    ),
    "float-class-index": (lambda: batch_with(c=torch.zeros(B)), InputTypeError, ["'c'", "integer", "torch.float32"]),
    "wrong-shape": (lambda: batch_with(a=torch.randn(B, 6)), InputError, ["'a'", "(B, 5)", "(4, 6)"]),
    "wrong-ndim": (lambda: batch_with(b=torch.rand(B, 16)), InputError, ["'b'", "(B, 1, 4, 4)", "(4, 16)"]),
    "bernoulli-2.0": (
        lambda: batch_with(b=torch.full((B, 1, 4, 4), 2.0)),
        InputError,
        ["'b'", "[0, 1]", "2]", "rows [0, 1, 2, 3]"],
    ),
    "bernoulli-negative": (lambda: batch_with(b=-torch.ones(B, 1, 4, 4)), InputError, ["'b'", "[0, 1]", "[-1"]),
    "class-too-large": (
        lambda: batch_with(c=torch.tensor([0, 3, 1, 2])),
        InputError,
        ["'c'", "[0, 3)", "3]", "rows [1]"],
    ),
    "class-negative": (
        lambda: batch_with(c=torch.tensor([0, 1, -1, 2])),
        InputError,
        ["'c'", "[0, 3)", "[-1", "rows [2]"],
    ),
    "nan-present-row": (
        lambda: batch_with(a=torch.randn(B, 5).index_fill(0, torch.tensor([1]), float("nan"))),
        InputError,
        ["'a'", "NaN/inf", "rows [1]"],
    ),
    "inf-present-row": (
        lambda: batch_with(a=torch.randn(B, 5).index_fill(0, torch.tensor([2]), float("inf"))),
        InputError,
        ["'a'", "NaN/inf", "rows [2]"],
    ),
    "every-modality-missing": (
        lambda: small_batch(B, present={n: torch.tensor([True, False, True, True]) for n in "abc"}),
        InputError,
        ["rows [1]", "every modality missing"],
    ),
    "mask-float": (
        lambda: batch_with(present_a=torch.ones(B)),
        InputTypeError,
        ["presence mask of 'a'", "torch.float32", "bool"],
    ),
    "mask-wrong-length": (
        lambda: batch_with(present_a=torch.ones(3, dtype=torch.bool)),
        InputError,
        ["presence mask of 'a'", "(4,)", "(3,)"],
    ),
    "mask-2d": (
        lambda: batch_with(present_b=torch.ones(B, 1, dtype=torch.bool)),
        InputError,
        ["presence mask of 'b'", "(4,)", "(4, 1)"],
    ),
    "mask-numpy": (lambda: batch_with(present_c=np.ones(B, bool)), InputTypeError, ["presence mask of 'c'", "ndarray"]),
    "mask-wrong-device": (
        lambda: batch_with(present_a=torch.ones(B, dtype=torch.bool, device="meta")),
        InputError,
        ["presence mask of 'a'", "meta", "cpu"],
    ),
    "empty-batch": (
        lambda: MultimodalBatch({k: v[:0] for k, v in small_batch(B).data.items()}),
        InputError,
        ["empty", "batch size 0"],
    ),
    "unknown-modality": (lambda: batch_with(zz=torch.randn(B, 2)), UnknownModalityError, ["'zz'", "'a'"]),
    "label-wrong-rows": (
        lambda: MultimodalBatch(small_batch(B).data, labels={"y": torch.zeros(3)}),
        InputError,
        ["label 'y'", "4 rows", "(3,)"],
    ),
    "label-numpy": (
        lambda: MultimodalBatch(small_batch(B).data, labels={"y": np.zeros(B)}),
        InputTypeError,
        ["label 'y'", "ndarray"],
    ),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_batch_validation_names_the_culprit(case):
    build, error, words = DATA_CASES[case]
    raises(error, words, lambda: check(build()))  # a numpy array is refused when the batch is built


@pytest.mark.parametrize(
    "case", ["int64-image", "bernoulli-2.0", "class-too-large", "mask-wrong-length", "empty-batch"]
)
def test_objectives_validate_their_batch(case):
    build, error, words = DATA_CASES[case]
    model, guide = pair()
    raises(error, words, BetaELBO().differentiable_loss, model, guide, build())
    raises(error, words, MaskedELBO().differentiable_loss, model, guide, build())


def test_unknown_modality_is_still_a_key_error():
    err = raises(KeyError, ["'zz'"], check, batch_with(zz=torch.randn(B, 2)))
    assert isinstance(err, InputError) and "zz" in str(err) and not str(err).startswith('"')
    raises(KeyError, ["lacks modalities ['c']"], small_batch(B).select(["a", "b"]).validate, small_modalities())


def test_batch_construction_errors():
    raises(InputTypeError, ["'a'", "ndarray", "torch.as_tensor"], MultimodalBatch, {"a": np.zeros((B, 5))})
    raises(
        InputError, ["batch size", "'a': 4", "'c': 3"], MultimodalBatch, {"a": torch.zeros(B, 5), "c": torch.zeros(3)}
    )
    raises(
        InputTypeError, ["MultimodalBatch", "dict"], BetaELBO().differentiable_loss, *pair(), {"a": torch.zeros(B, 5)}
    )


def test_guide_posterior_validates():
    _, guide = pair()
    raises(InputError, ["'b'", "[0, 1]"], guide.posterior, batch_with(b=torch.full((B, 1, 4, 4), 2.0)))
    raises(
        InputError,
        ["'a'", "NaN/inf", "rows [0, 1, 2, 3]"],
        guide.posterior,
        batch_with(a=torch.full((B, 5), float("nan"))),
    )


def test_subset_posterior_and_conditional_generation_validate():
    model, guide = pair()
    bad = batch_with(a=torch.randn(B, 5).index_fill(0, torch.tensor([3]), float("nan")))
    raises(InputError, ["'a'", "rows [3]"], SubsetPosterior.from_guide, guide, bad, ["a"], model.prior_dist())
    raises(
        InputError,
        ["'a'", "rows [3]"],
        conditional.conditional_generate,
        model,
        bad,
        ["a", "b", "c"],
        joint_guide=guide,
    )
    raises(
        InputError,
        ["num_samples", ">= 1", "0"],
        conditional.conditional_generate,
        model,
        small_batch(B),
        ["a", "b", "c"],
        joint_guide=guide,
        num_samples=0,
    )
    raises(
        InputError,
        ["num_chains", ">= 1", "0"],
        conditional.conditional_generate,
        model,
        small_batch(B),
        ["a", "b"],
        experts=guide,
        num_chains=0,
    )


def test_likelihood_metric_validates():
    model, guide = pair()
    raises(
        InputError,
        ["'c'", "[0, 3)"],
        log_likelihood,
        model,
        guide,
        batch_with(c=torch.tensor([0, 9, 1, 2])),
        num_particles=2,
    )
    raises(InputError, ["num_particles", ">= 1", "0"], log_likelihood, model, guide, small_batch(B), num_particles=0)


# ---------------------------------------------------------------------- fit


def test_fit_rejects_bernoulli_value_2_before_training():
    model, guide = pair()
    data = dict(small_batch(8).data)
    data["b"] = data["b"] * 2.0
    ds = MultimodalDataset(data)
    before = {k: v.clone() for k, v in guide.state_dict().items()}
    raises(InputError, ["train_data", "'b'", "[0, 1]", "2]"], fit, model, guide, ds, BetaELBO(), epochs=1, batch_size=4)
    assert all(torch.equal(before[k], v) for k, v in guide.state_dict().items())  # no step was taken


def test_fit_reports_nan_in_a_present_row_as_input_not_as_a_trained_parameter_problem():
    model, guide = pair()
    data = dict(small_batch(8).data)
    data["a"] = data["a"].index_fill(0, torch.tensor([6]), float("nan"))
    with pytest.raises(InputError) as info:
        fit(model, guide, MultimodalDataset(data), BetaELBO(), epochs=1, batch_size=4)
    assert not isinstance(info.value, NonFiniteLossError)
    assert "'a'" in str(info.value) and "rows [6]" in str(info.value)  # the dataset's row, not the batch's


def test_fit_checks_every_listed_batch_and_val_data():
    model, guide = pair()
    good = small_batch(B)
    raises(
        InputError,
        ["train_data[1]", "presence mask of 'a'"],
        fit,
        model,
        guide,
        [good, batch_with(present_a=torch.ones(3, dtype=torch.bool))],
        epochs=1,
        batch_size=4,
    )
    bad_val = MultimodalDataset(batch_with(c=torch.tensor([0, 1, 2, 5])).data)
    raises(InputError, ["val_data", "'c'"], fit, model, guide, good, val_data=bad_val, epochs=1, batch_size=4)


def test_fit_config_errors_name_the_setting():
    model, guide = pair()
    raises(InputError, ["epochs", ">= 1", "0"], fit, model, guide, small_batch(B), epochs=0, batch_size=4)
    raises(InputError, ["lr", "-1"], fit, model, guide, small_batch(B), epochs=1, batch_size=4, lr=-1.0)
    raises(InputTypeError, ["unknown fit setting", "epoch"], fit, model, guide, small_batch(B), epoch=1, batch_size=4)


# ---------------------------------------------------------------------- construction arguments


@pytest.mark.parametrize("latent_dim", [0, -1])
def test_latent_dim_must_be_positive(latent_dim):
    mods = small_modalities()
    raises(InputError, ["latent_dim", ">= 1", str(latent_dim)], MultimodalVAE, mods, latent_dim)
    raises(InputError, ["latent_dim", ">= 1", str(latent_dim)], JointGuide, mods, latent_dim)
    raises(InputError, ["latent_dim", ">= 1", str(latent_dim)], PrivateLatentVAE, mods, latent_dim, 2)
    raises(InputError, ["private_dim", ">= 1", str(latent_dim)], PrivateLatentVAE, mods, 2, latent_dim)


def test_latent_dim_must_be_an_integer():
    raises(InputTypeError, ["latent_dim", "integer", "2.5"], MultimodalVAE, small_modalities(), 2.5)


def test_modality_spec_errors():
    raises(InputError, ["'x'", "shape", ">= 1", "(0,)"], Modality, "x", (0,))
    raises(InputError, ["'x'", "scale", "-1"], Modality, "x", (2,), scale=-1.0)


# ---------------------------------------------------------------------- sampler arguments


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"warmup_steps": -5}, ["warmup_steps", ">= 0", "-5"]),
        ({"num_samples": 0}, ["num_samples", ">= 1", "0"]),
        ({"num_chains": 0}, ["num_chains", ">= 1", "0"]),
        ({"num_samples": 2.5}, ["num_samples", "integer", "2.5"]),
    ],
    ids=["warmup-negative", "no-samples", "no-chains", "fractional-samples"],
)
def test_sample_subset_posterior_arguments(kwargs, words):
    args = {"num_samples": 10, "warmup_steps": 10, "num_chains": 2, **kwargs}
    error = InputTypeError if isinstance(kwargs.get("num_samples"), float) else InputError
    raises(error, words, sample_subset_posterior, object(), improper="ignore", progress=False, **args)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"step_size": float("nan")}, ["step_size", "finite", "nan"]),
        ({"step_size": float("inf")}, ["step_size", "finite", "inf"]),
        ({"step_size": -0.1}, ["step_size", "positive", "-0.1"]),
        ({"num_chains": 0}, ["num_chains", ">= 1", "0"]),
        ({"target_accept_prob": 1.5}, ["target_accept_prob", "(0, 1)", "1.5"]),
    ],
    ids=["step-nan", "step-inf", "step-negative", "no-chains", "accept-prob"],
)
def test_batched_hmc_arguments(kwargs, words):
    raises(InputError, words, BatchedHMC, potential_fn=lambda z: (z**2).sum(), **kwargs)


# ---------------------------------------------------------------------- run folders


def test_corrupt_config_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"latent_dim": 2, "seed"')  # truncated
    raises(RunFolderError, [str(path), "not valid JSON"], load_toy_run, tmp_path)
    with pytest.raises(SystemExit, match="config.json"):  # the CLI reports it as an error line
        main(["sample", "--run", str(tmp_path), "--given", "square"])


def test_config_json_without_needed_entries_names_file_and_keys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"seed": 0}))
    raises(RunFolderError, [str(path), "latent_dim", "test_size"], load_toy_run, tmp_path)
    path.write_text("[1, 2]")
    raises(RunFolderError, [str(path), "list"], load_toy_run, tmp_path)


def test_corrupt_checkpoint_is_a_run_folder_error_naming_the_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    raises(RunFolderError, [str(path), "cannot read checkpoint"], load_checkpoint, path)
