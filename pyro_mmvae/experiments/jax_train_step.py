"""A jitted JAX training step of the masked objective: the speed reference for ``benchmarks/train_step.py``.

What a JAX user gets when the whole step — masked bound, gradient, NaN zeroing, element-wise clipping
and Adam — is one ``jax.jit``-compiled function, as in the permutation-invariant paper's published
code. It is built FROM the library's model and guide (an aggregation guide with sum pooling or a
product of experts, a :class:`~pyro_mmvae.models.MultimodalVAE` with Normal (fixed or learned
scale) or one-hot categorical likelihoods and a standard-normal prior): the same layers, widths, activations and initial
weights, so both sides do the same arithmetic per step:

- each modality encoded once, ``h_s = enc_s(x_s)`` with ``x_s`` zeroed in missing rows;
- S from the paper's mask sampler (γ ~ U(0, 1), m_s ~ Bernoulli(γ), within the present modalities);
- z_S ~ q(·|x_S), z_M ~ q(·|x_M) (sum pooling: χ once, ρ for S and for M; PoE: the product over S
  and over M with the prior expert, the Gaussian product's mean);
- L̂ = Σ_{s∈S} log p(x_s|z_S) + log p(z_S) − log q̄(z_S|x_S)
  + Σ_{s∈M∖S} log p(x_s|z_M) + log q(z_M|x_S) − log q̄(z_M|x_M) (q̄: stop-gradient parameters),
  the second line zero where S = M; loss −mean L̂, β = 1, one particle.

``jax`` is optional (the ``[bench]`` extra). XLA is asked for one compute thread unless it already
runs or ``XLA_FLAGS`` is set. Compile time is reported separately.
"""

from __future__ import annotations

import importlib.util
import math
import time

import numpy as np
import torch
from torch import nn

from ..distributions.experts import POE_LOG_VARIANCE_KNEE
from ..distributions.likelihoods import MIN_SCALE
from ..distributions.positive import EXP_LINEAR_KNEE
from ..guides.aggregation import PoEGuide, SumPoolingGuide
from .blackjax_reference import single_threaded_xla

__all__ = ["JaxTrainStep", "jax_available", "network_layers"]

LOG_2PI = math.log(2 * math.pi)


def jax_available() -> str | None:
    """``None`` when ``jax`` is installed, else why not (for the skip message); does not import it."""
    if importlib.util.find_spec("jax") is None:
        return "jax not installed (the optional extra: pip install 'pyro_mmvae[bench]')"
    return None


def network_layers(module: nn.Module) -> list[tuple]:
    """A feed-forward torch network as ``[("dense", W (in, out), b (out,)) | ("relu",) | ("leaky", slope)]``.

    Raises ``ValueError`` for any layer other than Linear, ReLU, LeakyReLU or a shape-preserving
    flatten of flat inputs.
    """
    layers = []
    for layer in module.modules():
        if layer is module and not isinstance(layer, nn.Linear | nn.ReLU | nn.LeakyReLU):
            continue
        if isinstance(layer, nn.Linear):
            bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
            layers.append(("dense", layer.weight.detach().T.numpy().copy(), bias.detach().numpy().copy()))
        elif isinstance(layer, nn.ReLU):
            layers.append(("relu",))
        elif isinstance(layer, nn.LeakyReLU):
            layers.append(("leaky", float(layer.negative_slope)))
        elif list(layer.children()) or type(layer).__name__ == "Reshape":
            continue  # containers; the flat encoders' Reshape is the identity on flat inputs
        else:
            raise ValueError(f"no JAX counterpart for layer {type(layer).__name__} of {type(module).__name__}")
    return layers


class JaxTrainStep:
    """One jitted masked-objective step with the architecture and initial weights of ``model`` and ``guide``.

    Args:
        model: a :class:`~pyro_mmvae.models.MultimodalVAE` (standard-normal prior;
            ``normal`` (fixed or learned scale) or ``onehot_categorical`` likelihoods).
        guide: a :class:`~pyro_mmvae.guides.aggregation.SumPoolingGuide` or
            :class:`~pyro_mmvae.guides.aggregation.PoEGuide` (correct mean).
        lr, clip: Adam's learning rate and the element-wise gradient clip.

    ``step(batch)`` runs one step on a :class:`~pyro_mmvae.data.MultimodalBatch` and returns the loss
    (it blocks until the result is ready); ``compile_seconds`` is the first call's compile time.
    """

    def __init__(self, model, guide, lr: float, clip: float, seed: int = 0):
        single_threaded_xla()
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        if isinstance(guide, SumPoolingGuide) and guide.num_components is None:
            self.kind = "sumpooling"
            agg = guide.aggregator
            nets = {"chi": network_layers(agg.chi), "rho": network_layers(agg.rho)}
            self.min_scale = guide.min_scale
        elif isinstance(guide, PoEGuide) and guide.poe_mean == "correct":
            self.kind, nets, self.var_floor = "poe", {}, guide.var_floor
        else:
            raise ValueError(f"no JAX reference step for {type(guide).__name__} (SumPooling or correct-mean PoE)")
        self.names = guide.names
        self.latent_dim = guide.latent_dim
        for name, enc in guide.encoders.encoders.items():
            nets[f"enc_{name}"] = network_layers(enc)
        self.likelihoods, raw_scales = {}, {}
        for name in self.names:
            nets[f"dec_{name}"] = network_layers(model.decoders[name])
            lik = model.likelihoods[name]
            if lik.kind == "normal" and lik.modality.learn_scale:  # σ = MIN_SCALE + softplus(raw), trained
                self.likelihoods[name] = ("normal", None)
                raw_scales[name] = lik.raw_scale.detach().numpy().copy()
            elif lik.kind == "normal":
                self.likelihoods[name] = ("normal", float(lik.scale()))
            elif lik.kind == "onehot_categorical":
                self.likelihoods[name] = ("onehot", None)
            else:
                raise ValueError(f"no JAX reference likelihood for modality {name!r} ({lik.kind})")
        # parameters: the dense layers' (W, b); activations stay static structure
        self.structure = {k: [layer if layer[0] != "dense" else ("dense",) for layer in v] for k, v in nets.items()}
        params = {k: [(jnp.asarray(layer[1]), jnp.asarray(layer[2])) for layer in v if layer[0] == "dense"]
                  for k, v in nets.items()}  # fmt: skip
        params["raw_scales"] = {k: jnp.asarray(v) for k, v in raw_scales.items()}
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        self.state = (params, zeros, zeros, jnp.zeros((), jnp.int32), jax.random.PRNGKey(seed))
        self.lr, self.clip = float(lr), float(clip)
        self._step = jax.jit(self._update)
        self.compile_seconds = None

    # ------------------------------------------------------------------ the computation
    def _net(self, name, params, x):
        jnp = self.jnp
        it = iter(params[name])
        for layer in self.structure[name]:
            if layer[0] == "dense":
                w, b = next(it)
                x = x @ w + b
            elif layer[0] == "relu":
                x = jnp.maximum(x, 0)
            else:
                x = jnp.where(x >= 0, x, layer[1] * x)
        return x

    def _exp_linear(self, raw, knee):
        jnp = self.jnp
        return jnp.where(raw < knee, jnp.exp(jnp.minimum(raw, knee)), math.exp(knee) * (1 + raw - knee))

    def _posterior(self, params, feats, mask):
        """(loc, scale), each (B, D), of q(·|x_mask) from features (B, M, ·) and mask (B, M)."""
        jnp = self.jnp
        if self.kind == "sumpooling":
            pooled = jnp.where(mask[..., None], feats, 0.0).sum(-2)
            out = self._net("rho", params, pooled)
            loc, raw = jnp.split(out, 2, axis=-1)
            return loc, self.min_scale + self._exp_linear(raw, EXP_LINEAR_KNEE)
        loc, log_scale = jnp.split(feats, 2, axis=-1)
        var = self.var_floor + self._exp_linear(2 * log_scale, POE_LOG_VARIANCE_KNEE)
        precision = jnp.where(mask[..., None], 1.0 / var, 0.0).sum(-2) + 1.0 / (1.0 + self.var_floor)
        weighted = jnp.where(mask[..., None], loc / var, 0.0).sum(-2)
        return weighted / precision, jnp.sqrt(1.0 / precision)

    @staticmethod
    def _normal_lp(jnp, x, loc, scale):
        return (-0.5 * ((x - loc) / scale) ** 2 - jnp.log(scale) - 0.5 * LOG_2PI).sum(-1)

    def _loss(self, params, data, present, key):
        jax, jnp = self.jax, self.jnp
        x = {n: jnp.where(present[n][:, None], data[n], 0.0) for n in self.names}
        h = jnp.stack([self._net(f"enc_{n}", params, x[n]) for n in self.names], -2)
        feats = self._net("chi", params, h) if self.kind == "sumpooling" else h
        pres = jnp.stack([present[n] for n in self.names], -1)
        k_gamma, k_mask, k_s, k_m = jax.random.split(key, 4)
        b = pres.shape[0]
        gamma = jax.random.uniform(k_gamma, (b, 1))
        subset = (jax.random.uniform(k_mask, pres.shape) < gamma) & pres
        rest = pres & ~subset
        loc_s, scale_s = self._posterior(params, feats, subset)
        loc_m, scale_m = self._posterior(params, feats, pres)
        z_s = loc_s + scale_s * jax.random.normal(k_s, loc_s.shape)
        z_m = loc_m + scale_m * jax.random.normal(k_m, loc_m.shape)

        def recon(z):
            out = []
            for n in self.names:
                p = self._net(f"dec_{n}", params, z)
                kind, scale = self.likelihoods[n]
                if kind == "normal":
                    if scale is None:
                        scale = MIN_SCALE + jax.nn.softplus(params["raw_scales"][n])
                    out.append(self._normal_lp(jnp, data[n], p, scale))
                else:
                    out.append((data[n] * jax.nn.log_softmax(p, -1)).sum(-1))
            return jnp.stack(out, -1)  # (B, M)

        sg = jax.lax.stop_gradient
        log_p = (-0.5 * z_s**2 - 0.5 * LOG_2PI).sum(-1)
        l_s = jnp.where(subset, recon(z_s), 0.0).sum(-1) + log_p - self._normal_lp(jnp, z_s, sg(loc_s), sg(scale_s))
        l_rest = (jnp.where(rest, recon(z_m), 0.0).sum(-1) + self._normal_lp(jnp, z_m, loc_s, scale_s)
                  - self._normal_lp(jnp, z_m, sg(loc_m), sg(scale_m)))  # fmt: skip
        l_rest = jnp.where(rest.any(-1), l_rest, 0.0)
        return -(l_s + l_rest).mean()

    def _update(self, state, data, present):
        jax, jnp = self.jax, self.jnp
        params, m, v, t, key = state
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(self._loss)(params, data, present, sub)
        grads = jax.tree_util.tree_map(lambda g: jnp.clip(jnp.nan_to_num(g, nan=0.0), -self.clip, self.clip), grads)
        t = t + 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        m = jax.tree_util.tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v_, g: b2 * v_ + (1 - b2) * g * g, v, grads)
        c1, c2 = 1 - b1**t, 1 - b2**t
        params = jax.tree_util.tree_map(lambda p, m_, v_: p - self.lr * (m_ / c1) / (jnp.sqrt(v_ / c2) + eps),
                                        params, m, v)  # fmt: skip
        return (params, m, v, t, key), loss

    # ------------------------------------------------------------------ running it
    def _arrays(self, batch):
        jnp = self.jnp
        data = {n: jnp.asarray(batch.data[n].reshape(batch.batch_size, -1).numpy(), jnp.float32) for n in self.names}
        present = {n: jnp.asarray(batch.present[n].numpy()) for n in self.names}
        return data, present

    def step(self, batch) -> float:
        """One optimizer step on ``batch``; the loss (blocks until the update is done)."""
        data, present = self._arrays(batch)
        if self.compile_seconds is None:
            t0 = time.perf_counter()
            self._step = self._step.lower(self.state, data, present).compile()
            self.compile_seconds = time.perf_counter() - t0
        self.state, loss = self._step(self.state, data, present)
        return float(np.asarray(loss))

    def time_steps(self, batches: list, steps: int) -> float:
        """Median ms of ``steps`` steps over ``batches`` (inputs converted before the clock starts)."""
        arrays = [self._arrays(b) for b in batches]
        if self.compile_seconds is None:
            self.step(batches[0])
        times = []
        for i in range(steps):
            data, present = arrays[i % len(arrays)]
            t0 = time.perf_counter()
            self.state, loss = self._step(self.state, data, present)
            loss.block_until_ready()
            times.append(time.perf_counter() - t0)
        return 1e3 * float(np.median(times))
