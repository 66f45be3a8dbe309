"""The circles/squares experiment (JNF paper, Section 4.1): data, networks, evaluation, figures.

Used by ``pyro-mmvae train --dataset toy``. Networks are MLPs on the flattened 32×32 images
(fast on CPU); the latent space is 2-D so it can be drawn (paper Figure 2, left).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import plots
from ..data import CirclesSquares, iterate_batches
from ..data.toy import centre_fill_classifier
from ..infer.elbo import BetaELBO
from ..metrics.coherence import conditional_coherence, joint_coherence

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
    from ..guides import JointGuide
    from ..models import MultimodalVAE

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
    """
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
