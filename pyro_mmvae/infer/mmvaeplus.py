"""MMVAE+'s objective: the stratified K-sample bound with private latents and auxiliary priors.

MMVAE+ ("MMVAE+: Enhancing the generative quality of multimodal VAEs without compromises", Palumbo
et al. 2023), as in the authors' ``m_dreg`` (srl-ethz/mmvaeplus ``src/objectives.py``). Model:
p(z) Π_n p(w_n) p(x_n | z, w_n) (:class:`~pyro_mmvae.models.mmvaeplus.MMVAEPlus`); guide: the
mixture q(z | X) = (1/|M|) Σ_m q(z | x_m) and private experts q(w_m | x_m)
(:class:`~pyro_mmvae.guides.mmvaeplus.MMVAEPlusGuide`). For each observed modality m, K particles

    z^k ~ q(z | x_m),  w_m^k ~ q(w_m | x_m),  w̃_n^k ~ r_n(w_n) for n ≠ m   (the auxiliary priors)

    log w_m^k = λ_m log p(x_m | z^k, w_m^k) + Σ_{n∈M, n≠m} λ_n log p(x_n | z^k, w̃_n^k)
              + β [log p(z^k) + log p(w_m^k) − log q(z^k | X) − log q(w_m^k | x_m)]

and the bound (1/|M|) Σ_{m∈M} log (1/K) Σ_k w_m^k (``bound="stratified"``, the authors'; or
``"pooled"``, see :mod:`pyro_mmvae.infer.mmvae`). The cross-modal draws w̃_n enter only the
likelihoods, with no density ratio: r_n is trained (through its reparameterised draws) to make
cross-modal reconstructions good, and does not change the bound's form. When r_n = p(w_n) (as at
initialisation) the pooled bound converges to log p(X) as K → ∞.

Gradients: ``dreg=True`` (default, as the authors): q evaluated with stop-gradient parameters and
DReG (:mod:`pyro_mmvae.infer.dreg`) on the draws z^k and w_m^k of each stratum (the authors' hook on
``uss`` = [w_m, z]); the w̃_n are not guide draws, their gradient reaches r_n's scale as a model
parameter's (Σ_k w̃_k ∇ log w_k).

In Pyro terms, per stratum: the guide is traced with subset {m} (which draws z, w_m from q and the
other private sites from their prior), the draws at the sites ``"w_<n>"`` (n ≠ m) are replaced by
draws from r_n, and the model is replayed on that trace; the guide with every observed modality is
replayed on it for q(z | X). Only the sites named above enter the weights.
"""

from __future__ import annotations

from pyro import poutine

from ..data.batch import MultimodalBatch
from ..distributions.detach import detach_distribution
from ..sites import LATENT_SITE, private_site
from .mmvae import StratifiedMixtureELBO, Stratum
from .traces import check_latent_sites, observed_log_probs, site_log_prob, trace_guide, trace_model


def with_values(trace, values: dict):
    """A shallow copy of ``trace`` whose sample sites ``values`` hold the given tensors (stale log-probs dropped)."""
    out = trace.copy()
    for name, value in values.items():
        node = {
            k: v for k, v in trace.nodes[name].items() if k not in ("log_prob", "unscaled_log_prob", "log_prob_sum")
        }
        node["value"] = value
        out.nodes[name] = node
    return out


class MMVAEPlusELBO(StratifiedMixtureELBO):
    """MMVAE+'s stratified importance-weighted objective (module docstring).

    Args as in :class:`~pyro_mmvae.infer.mmvae.StratifiedMixtureELBO` (``num_particles`` K = 10 in the
    JNF paper's MMVAE+ runs, ``dreg=True``, ``bound="stratified"``). The model must provide
    ``draw_private(name, lead, "auxiliary")`` (a reparameterised draw from r_name).
    """

    def stratum(self, model, guide, batch: MultimodalBatch, name: str, beta: float, weights) -> Stratum:
        b, k = batch.batch_size, self.num_particles
        own = private_site(name)
        g = trace_guide(guide, batch, [name], beta, k)  # z, w_name ~ q(· | x_name)
        others = {private_site(n): model.draw_private(n, (k, b), "auxiliary") for n in model.names if n != name}
        g = with_values(g, others)  # w̃_n ~ r_n for every other modality
        m = trace_model(model, g, batch, beta, k)
        check_latent_sites(g, m)
        recon = sum(observed_log_probs(m, batch, weights).values())  # zero where a modality is missing
        mixture = trace_guide(poutine.replay(guide, trace=g), batch, None, beta, k)  # q(z | X) at z
        detach = detach_distribution if self.detach_q else None
        log_p = site_log_prob(m, LATENT_SITE, b) + site_log_prob(m, own, b)
        log_q = site_log_prob(mixture, LATENT_SITE, b, detach) + site_log_prob(g, own, b, detach)
        draws = [g.nodes[LATENT_SITE]["value"], g.nodes[own]["value"]]
        return Stratum(name, recon + log_p - log_q, batch.subset_mask([name])[name], draws)
