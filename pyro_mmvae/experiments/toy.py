"""The circles/squares experiment of "Bridging the inference gap in Multimodal Variational Autoencoders"
(Section 4.1): data, networks, evaluation, figures.

Used by the staged pipeline :mod:`pyro_mmvae.experiments.jnf_pipeline` (``pyro-mmvae train --dataset toy``).
Networks are MLPs on the flattened 32×32 images (fast on CPU); the latent space is 2-D so it can be
drawn (the paper's Figure 2, left).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import plots
from ..data import CirclesSquares, iterate_batches
from ..data.toy import centre_fill_classifier
from ..guides import FlowExpertGuide, JointGuide
from ..infer.elbo import BetaELBO
from ..metrics.coherence import conditional_coherence, joint_coherence
from ..models import MultimodalVAE, as_model
from ..nn.projectors import make_projectors

CLASS_NAMES = ("empty", "full")
CLASS_CMAPS = ("Reds", "Blues")  # as in the paper's figure: full shapes blue, empty ones red
CLASSIFIERS = {"square": centre_fill_classifier, "circle": centre_fill_classifier}


def build_data(train_size: int, val_size: int, test_size: int, seed: int):
    """``(train, validation, test)`` splits of the circles/squares data."""
    return (
        CirclesSquares("train", train_size, seed),
        CirclesSquares("validation", val_size, seed),
        CirclesSquares("test", test_size, seed),
    )


def build_joint_vae(latent_dim: int, hidden=(512, 512), head_dim: int = 256, prior: str = "normal"):
    """``(model, guide)``: a Bernoulli-likelihood MultimodalVAE and its JointGuide."""
    mods = CirclesSquares.modalities
    model = MultimodalVAE(mods, latent_dim, prior=prior, hidden=hidden)
    guide = JointGuide(mods, latent_dim, head_dim=head_dim, hidden=hidden, merge_hidden=(512, 512))
    return model, guide


def _collect(dataset, limit: int, batch_size: int, device):
    out = []
    seen = 0
    for batch in iterate_batches(dataset, batch_size, shuffle=False):
        out.append(batch.to(device))
        seen += batch.batch_size
        if seen >= limit:
            break
    return out


@torch.no_grad()
def evaluate_joint(model, guide, test, out_dir, device, num_plot: int = 3000, batch_size: int = 500) -> dict:
    """Test metrics and figures of a trained joint VAE.

    Returns a dict with the test ELBO (β = 1, unweighted, nats per data point), per-modality
    reconstruction quality (pixel accuracy of the thresholded mean reconstruction and Bernoulli
    negative log-likelihood per image), coherence of the shared full/empty class under the centre
    fill-ratio classifier (reconstructions vs the true class, and joint coherence of prior
    samples), and writes ``latent_space.png``, ``reconstructions.png``, ``prior_samples.png``.
    ``model`` may be a Pyro function that declares its modalities (see :func:`~pyro_mmvae.models.as_model`).
    """
    model = as_model(model, guide, next(iterate_batches(test, 1, shuffle=False)).to(device))
    model.eval()
    guide.eval()
    out_dir = Path(out_dir)
    elbo = BetaELBO()
    total, n = 0.0, 0
    acc = {m: 0.0 for m in model.names}
    nll = {m: 0.0 for m in model.names}
    correct = {m: 0.0 for m in model.names}
    codes, classes, sizes = [], [], []
    for batch in iterate_batches(test, batch_size, shuffle=False):
        batch = batch.to(device)
        b = batch.batch_size
        total += elbo.per_datapoint_bound(model, guide, batch, weighted=False).sum().item()
        q = guide.posterior(batch)
        z = q.mean
        for name in model.names:
            lik = model.likelihood_dist(name, z)
            mean = model.reconstruct(z, [name])[name]
            x = batch.data[name]
            acc[name] += ((mean > 0.5).float() == x).float().mean(dim=(1, 2, 3)).sum().item()
            nll[name] += -lik.log_prob(x).sum().item()
            correct[name] += (CLASSIFIERS[name](mean) == batch.labels["full"]).float().sum().item()
        if sum(len(c) for c in codes) < num_plot:
            codes.append(z.cpu())
            classes.append(batch.labels["full"].cpu())
            sizes.append(batch.labels["square_size"].cpu())
        n += b
    metrics = {
        "test_elbo": total / n,
        "reconstruction": {
            m: {"pixel_accuracy": acc[m] / n, "nll_per_image": nll[m] / n, "class_coherence": correct[m] / n}
            for m in model.names
        },
    }
    # Joint coherence: decode prior samples, ask the classifier whether both images agree.
    z_prior = model.sample_prior(5000).to(device)
    generated = model.reconstruct(z_prior)
    metrics["joint_coherence"] = joint_coherence(CLASSIFIERS, generated)
    metrics["prior_full_fraction"] = centre_fill_classifier(generated["square"]).float().mean().item()

    codes = torch.cat(codes)[:num_plot]
    plots.latent_scatter(
        codes,
        torch.cat(classes)[:num_plot],
        out_dir / "latent_space.png",
        intensity=torch.cat(sizes)[:num_plot],
        class_names=CLASS_NAMES,
        title="joint latent space q(z|X) (shade: square size)",
        cmaps=CLASS_CMAPS,
    )
    first = _collect(test, 12, 12, device)[0][:12]
    rec = model.reconstruct(guide.posterior(first).mean)
    plots.image_grid(
        {
            "square": first.data["square"],
            "recon": rec["square"],
            "circle": first.data["circle"],
            "recon ": rec["circle"],
        },
        out_dir / "reconstructions.png",
        title="test data and reconstructions (mean of p(x|z), z = mean of q(z|X))",
    )
    plots.image_grid(
        {"square": generated["square"][:12], "circle": generated["circle"][:12]},
        out_dir / "prior_samples.png",
        title="decoded prior samples z ~ p(z)",
    )
    return metrics


def conditional_metrics(generated: dict, labels: torch.Tensor) -> dict[str, float]:
    """Coherence of generated modalities with the true full/empty class."""
    return conditional_coherence(CLASSIFIERS, generated, labels)


# ---------------------------------------------------------------------- JNF stage 2 (and stage 0 for JNF-Shared)
EXPERT_VARIANTS = {
    "gaussian": {"num_blocks": 0},
    "flow": {"flow": "maf", "num_blocks": 2},
}


def build_experts(latent_dim: int, variant: str, projectors=None, hidden=(512, 512), seed: int = 0):
    """Unimodal experts q_j(z|x_j): ``"gaussian"``, ``"flow"`` (2 MAF blocks) or ``"shared"``
    (flow on frozen projections g_j(x_j), JNF-Shared)."""
    mods = CirclesSquares.modalities
    if variant == "shared":
        if projectors is None:
            raise ValueError("the 'shared' variant needs trained projectors")
        return FlowExpertGuide(mods, latent_dim, flow="maf", num_blocks=2, project=projectors, seed=seed)
    if variant not in EXPERT_VARIANTS:
        raise ValueError(f"unknown expert variant {variant!r}; expected gaussian, flow or shared")
    return FlowExpertGuide(mods, latent_dim, hidden=hidden, seed=seed, **EXPERT_VARIANTS[variant])


def build_projectors(out_dim: int = 10, hidden=(256, 256)):
    """The JNF-Shared projectors g_j: one MLP per modality onto an ``out_dim``-d feature."""
    return make_projectors(CirclesSquares.modalities, out_dim=out_dim, hidden=hidden)


def _grid(codes: torch.Tensor, steps: int = 120, margin: float = 0.5):
    lo = codes.min(0).values - margin
    hi = codes.max(0).values + margin
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], steps), torch.linspace(lo[1], hi[1], steps), indexing="xy")
    return gx, gy, torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)


@torch.no_grad()
def evaluate_experts(model, joint_guide, experts: dict, test, out_dir, device, batch_size: int = 500, seed: int = 0):
    """Cross-modal coherence per expert variant and the Figure-2 panels.

    For each variant, circles generated from squares (z ~ q_square(z|x_square), decoded mean) and
    squares from circles are classified full/empty by the centre fill-ratio classifier; the metric
    is the fraction matching the true shared class. ``expert_posteriors.png`` shows, for one large
    full test square, q(z|x_square) under every variant over the joint latent codes, with circles
    decoded from its samples.
    """
    model.eval()
    joint_guide.eval()
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    metrics = {}
    for variant, guide in experts.items():
        guide.eval()
        hits = {"square_to_circle": 0.0, "circle_to_square": 0.0}
        n = 0
        for batch in iterate_batches(test, batch_size, shuffle=False):
            batch = batch.to(device)
            for src, dst in (("square", "circle"), ("circle", "square")):
                z = guide.posterior(batch, [src]).sample()
                gen = model.reconstruct(z, [dst])[dst]
                hits[f"{src}_to_{dst}"] += (CLASSIFIERS[dst](gen) == batch.labels["full"]).float().sum().item()
            n += batch.batch_size
        metrics[variant] = {k: v / n for k, v in hits.items()}

    # Figure 2: the largest full square of the test split.
    whole = next(iterate_batches(test, min(len(test), 2000), shuffle=False)).to(device)
    codes = joint_guide.posterior(whole).mean.cpu()
    full = whole.labels["full"].bool()
    pick = torch.where(full, whole.labels["square_size"], torch.full_like(whole.labels["square_size"], -1)).argmax()
    one = whole[pick.reshape(1).to(whole.labels["full"].device)]
    gx, gy, pts = _grid(codes)
    panels, strips = {}, {}
    for variant, guide in experts.items():
        q = guide.posterior(one, ["square"])
        dens = q.log_prob(pts.to(device).unsqueeze(-2)).exp().reshape(gx.shape).cpu()
        panels[f"q(z|x_square): {variant}"] = (gx.numpy(), gy.numpy(), dens.numpy())
        zs = q.sample((8,))
        strips[f"q(z|x_square): {variant}"] = model.reconstruct(zs, ["circle"])["circle"][:, 0]
    plots.density_panels(
        panels,
        out_dir / "expert_posteriors.png",
        background=codes.numpy(),
        background_classes=whole.labels["full"].cpu().numpy(),
        images={k: v.cpu() for k, v in strips.items()},
        title=f"one full square of width {int(one.labels['square_size'].item())}: "
        "q(z|x_square) and circles decoded from its samples",
    )
    return metrics
