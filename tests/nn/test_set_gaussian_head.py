"""The set networks' Gaussian head: σ = min_scale + exp_linear(ℓ), exp(ℓ) up to the knee, tangent line above."""

import math

import pytest
import torch

from pyro_mmvae.nn.set_aggregators import EXP_LINEAR_KNEE, SetGaussianHead, exp_linear

K = EXP_LINEAR_KNEE


def test_exp_linear_is_exp_up_to_the_knee_with_the_same_gradient():
    raw = torch.linspace(-20.0, K, 101, dtype=torch.float64, requires_grad=True)
    out = exp_linear(raw)
    torch.testing.assert_close(out, raw.exp(), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(out.sum(), raw)
    torch.testing.assert_close(grad, raw.detach().exp())


def test_exp_linear_continues_with_the_tangent_above_the_knee():
    raw = torch.tensor([K + 1e-9, K + 1.0, 47.0, 1e4], dtype=torch.float64, requires_grad=True)
    out = exp_linear(raw)
    torch.testing.assert_close(out, math.exp(K) * (1 + raw.detach() - K))
    (grad,) = torch.autograd.grad(out.sum(), raw)
    torch.testing.assert_close(grad, torch.full_like(grad, math.exp(K)))
    # continuous (and C¹) at the knee
    assert out[0].item() == pytest.approx(math.exp(K), rel=1e-8)


def test_exp_linear_stays_finite_in_float32_where_exp_overflows():
    raw = torch.tensor([44.5, 89.0, 1e6], requires_grad=True)
    assert not torch.isfinite(raw.detach().exp().pow(2)).all()  # σ² of the plain exp link overflows
    out = exp_linear(raw)
    out.pow(2).sum().backward()
    assert torch.isfinite(out.pow(2)).all() and torch.isfinite(raw.grad).all()
    assert (out[1:] > out[:-1]).all()


def test_set_gaussian_head_splits_and_floors_the_scale():
    out = torch.tensor([[0.5, -1.0, 2.0, -30.0]])
    loc, scale = SetGaussianHead(min_scale=1e-3)(out)
    torch.testing.assert_close(loc, out[:, :2])
    torch.testing.assert_close(scale, 1e-3 + out[:, 2:].exp())
