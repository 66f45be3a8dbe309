"""Coherence of generated modalities, measured by classifiers of a shared label.

- ``conditional_coherence``: fraction of data points whose generated modality m is classified as
  the true label (C_{S→m} in the papers' notation).
- ``joint_coherence``: fraction of unconditional generations whose modalities all receive the same
  predicted label.

Classifiers are callables ``images (N, *shape) -> labels (N,)``. Plain accuracy is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

Classifier = Callable[[torch.Tensor], torch.Tensor]


def conditional_coherence(
    classifiers: Mapping[str, Classifier], generated: Mapping[str, torch.Tensor], labels: torch.Tensor
) -> dict[str, float]:
    """``{name: mean 1[clf_name(generated[name]) == labels]}`` for every generated modality."""
    out = {}
    for name, x in generated.items():
        if name not in classifiers:
            raise KeyError(f"no classifier for modality {name!r}; have {sorted(classifiers)}")
        pred = classifiers[name](x)
        out[name] = (pred.cpu() == labels.cpu()).float().mean().item()
    return out


def joint_coherence(classifiers: Mapping[str, Classifier], generated: Mapping[str, torch.Tensor]) -> float:
    """Fraction of joint generations whose modalities all get the same predicted label."""
    preds = [classifiers[name](x).cpu() for name, x in generated.items()]
    if len(preds) < 2:
        raise ValueError("joint coherence needs at least two generated modalities")
    agree = torch.ones_like(preds[0], dtype=torch.bool)
    for p in preds[1:]:
        agree &= p == preds[0]
    return agree.float().mean().item()
