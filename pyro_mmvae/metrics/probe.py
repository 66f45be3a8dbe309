"""Latent linear probes: multinomial logistic regression on encoded latents.

``Acc_S`` of the papers: fit a linear classifier on z ~ q(z | x_S^train) to predict a label, and
report its accuracy on z ~ q(z | x_S^test). The classifier is a multinomial logistic regression
written in torch (full-batch L-BFGS, float64, small L2 penalty, features standardised with the
training statistics), so the library needs no scikit-learn.
"""

from __future__ import annotations

import torch

from ..data.batch import Subset
from ..data.dataset import iterate_batches


def encode_dataset(guide, dataset, subset: Subset = None, batch_size: int = 500, sample: bool = True) -> torch.Tensor:
    """One latent per row of ``dataset`` (in order): z ~ q(z | x_S) (``sample``) or its mean. ``(N, D)``.

    ``subset``: modality names (default every present modality). Uses ``guide.posterior``.
    """
    if isinstance(subset, dict):
        raise TypeError("encode_dataset takes modality names as the subset, not per-row masks")
    device = next((p.device for p in guide.parameters()), None) if hasattr(guide, "parameters") else None
    out = []
    with torch.no_grad():
        for batch in iterate_batches(dataset, batch_size, shuffle=False):
            if device is not None:
                batch = batch.to(device)
            q = guide.posterior(batch, subset)
            out.append((q.sample() if sample else q.mean).cpu())
    return torch.cat(out)


class LinearProbe:
    """Multinomial logistic regression ``logits = standardise(z) W + c``.

    Args:
        num_classes: K (default: ``max(y) + 1`` at fit time).
        l2: weight of the penalty ½ l2 ‖W‖² added to the mean cross-entropy (keeps separable data finite).
        max_iter: L-BFGS iterations.
    """

    def __init__(self, num_classes: int | None = None, l2: float = 1e-4, max_iter: int = 200):
        self.num_classes, self.l2, self.max_iter = num_classes, float(l2), int(max_iter)
        self.weight = self.bias = self.mean = self.std = None

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(z).double().reshape(z.shape[0], -1) - self.mean) / self.std

    def fit(self, z: torch.Tensor, y: torch.Tensor) -> LinearProbe:
        """Fit on features ``z (N, D)`` and integer labels ``y (N,)``."""
        z = torch.as_tensor(z).double().reshape(len(z), -1)
        y = torch.as_tensor(y).long().reshape(-1)
        if z.shape[0] != y.shape[0]:
            raise ValueError(f"features and labels disagree on N: {z.shape[0]} vs {y.shape[0]}")
        if y.numel() and y.min() < 0:
            raise ValueError("labels must be non-negative class indices")
        k = self.num_classes or int(y.max()) + 1
        if int(y.max()) >= k:
            raise ValueError(f"label {int(y.max())} out of range for num_classes={k}")
        self.num_classes = k
        self.mean, self.std = z.mean(0), z.std(0).clamp_min(1e-8)
        x = self._features(z)
        self.weight = torch.zeros(x.shape[1], k, dtype=torch.float64, requires_grad=True)
        self.bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [self.weight, self.bias], max_iter=self.max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
        )

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ self.weight + self.bias, y)
            loss = loss + 0.5 * self.l2 * self.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight, self.bias = self.weight.detach(), self.bias.detach()
        return self

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            raise RuntimeError("call fit() first")
        return self._features(torch.as_tensor(z)) @ self.weight + self.bias

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(z).argmax(-1)

    def accuracy(self, z: torch.Tensor, y: torch.Tensor) -> float:
        return (self.predict(z) == torch.as_tensor(y).long().reshape(-1)).double().mean().item()


def linear_probe_accuracy(z_train, y_train, z_test, y_test, **kwargs) -> float:
    """Test accuracy of a :class:`LinearProbe` fitted on ``(z_train, y_train)``."""
    return LinearProbe(**kwargs).fit(z_train, y_train).accuracy(z_test, y_test)


def latent_linear_probe(
    guide,
    train,
    test,
    label: str = "label",
    subset: Subset = None,
    batch_size: int = 500,
    sample: bool = True,
    **kwargs,
) -> float:
    """Acc_S: probe fitted on z ~ q(z | x_S^train), evaluated on z ~ q(z | x_S^test).

    ``train``/``test`` are ``MultimodalDataset``s whose ``labels[label]`` holds class indices.
    """
    for ds in (train, test):
        if label not in ds.full.labels:
            raise KeyError(f"dataset has no label {label!r}; it has {sorted(ds.full.labels)}")
    z_tr = encode_dataset(guide, train, subset, batch_size, sample)
    z_te = encode_dataset(guide, test, subset, batch_size, sample)
    return linear_probe_accuracy(z_tr, train.full.labels[label], z_te, test.full.labels[label], **kwargs)
