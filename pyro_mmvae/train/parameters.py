"""Which parameters a stage trains, and which modules run in train mode while it does."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from itertools import chain

import torch

from ..nn.shared_encodings import without_module_registration


def trained_parameters(model, guide, params) -> list[tuple[str, torch.nn.Parameter]]:
    """``(qualified name, parameter)`` of the parameters to train, named ``model.<key>`` / ``guide.<key>``.

    ``params``: ``None`` (every parameter of model and guide with ``requires_grad``), or parameters
    and/or modules that live in the model or the guide (so that checkpoints include them).
    """
    names: dict[int, str] = {}
    for prefix, module in (("model", model), ("guide", guide)):
        for key, p in module.named_parameters():
            names.setdefault(id(p), f"{prefix}.{key}")
    if params is None:
        chosen = [p for p in chain(model.parameters(), guide.parameters()) if p.requires_grad]
    else:
        items = [params] if isinstance(params, torch.nn.Module | torch.Tensor) else list(params)
        chosen = []
        for item in items:
            if isinstance(item, torch.nn.Module):
                chosen.extend(item.parameters())
            elif isinstance(item, torch.Tensor):
                chosen.append(item)
            else:
                raise TypeError(f"params must hold nn.Parameters or nn.Modules, got {type(item).__name__}")
    out, seen = [], set()
    for p in chosen:
        if id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) not in names:
            raise ValueError(
                f"a parameter of shape {tuple(p.shape)} passed in params belongs to neither the model nor the guide; "
                "trained parameters must live in them so that checkpoints include them"
            )
        out.append((names[id(p)], p))
    if not out:
        raise ValueError(
            "there are no parameters to train (params is empty or every parameter has requires_grad=False)"
        )
    return out


@contextmanager
def only_these_require_grad(model, guide, trained):
    """Inside: exactly the trained parameters require grad (frozen ones cost no backward pass). Restored after."""
    every = {id(p): p for p in chain(model.parameters(), guide.parameters())}
    before = {k: p.requires_grad for k, p in every.items()}
    keep = {id(p) for _, p in trained}
    try:
        for k, p in every.items():
            p.requires_grad_(k in keep)
        yield
    finally:
        for k, p in every.items():
            p.requires_grad_(before[k])


@contextmanager
def restored_modes(modules: Iterable[torch.nn.Module]):
    """Restore every submodule's ``training`` flag on exit."""
    flags = [(m, m.training) for top in modules for m in top.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def set_train_mode(model, guide, train_mode_modules) -> None:
    """Model and guide in train mode; or, with ``train_mode_modules``, everything in eval mode but those."""
    if train_mode_modules is None:
        model.train()
        guide.train()
        return
    model.eval()
    guide.eval()
    for m in train_mode_modules:
        m.train()


class ModelGuidePair(torch.nn.Module):
    """Model and guide as one module running the objective, so that one ``functional_call`` swaps both's tensors.

    Its parameter names are ``model.<key>`` / ``guide.<key>``, as :func:`trained_parameters` names them.
    The networks are read without ``pyro.module`` registration: the callers (``fit(compile=True)``,
    ``fit_ensemble``) hold the parameters themselves.
    """

    def __init__(self, model: torch.nn.Module, guide: torch.nn.Module, objective):
        super().__init__()
        self.model, self.guide = model, guide
        self.objective = objective

    def forward(self, batch, loss_kwargs: dict) -> torch.Tensor:
        with without_module_registration():
            return self.objective.differentiable_loss(self.model, self.guide, batch, **loss_kwargs)
