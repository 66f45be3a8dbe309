"""Optimizers by name (``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"``) or by a user's factory.

A named optimizer is built as ``torch.optim.<Class>(params, lr=lr, **optimizer_kwargs)``, so weight
decay, momentum or Adam's betas are settings of the optimizer, never terms added to a loss. Adam and
AdamW use PyTorch's fused kernel (``fused=True``: one kernel for every parameter instead of a Python
loop over them, ~3.5x faster for small models on CPU) when every parameter is a floating-point CPU or
CUDA tensor and ``optimizer_kwargs`` set neither ``fused`` nor ``foreach``. A
factory is any callable ``(params, lr) -> torch.optim.Optimizer``; its state must hold only tensors
and plain values so that checkpoints load with ``weights_only=True`` (every ``torch.optim`` class does).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import torch

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}

# optimizers built with PyTorch's fused kernel unless the caller chooses an implementation
FUSED_BY_DEFAULT = ("adam", "adamw")
FUSED_DEVICES = ("cpu", "cuda")


def fusable(params: list[torch.Tensor], kwargs: Mapping[str, Any]) -> bool:
    """Whether a fused Adam(W) kernel applies: floating-point CPU/CUDA parameters, no implementation chosen."""
    if "fused" in kwargs or "foreach" in kwargs or not params:
        return False
    return all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)


OptimizerSpec = Union[str, Callable[..., torch.optim.Optimizer]]  # noqa: UP007 (a runtime alias)


def check_optimizer(spec: OptimizerSpec, kwargs: Mapping[str, Any]) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``spec`` names a known optimizer that accepts ``kwargs``."""
    if isinstance(spec, str):
        if spec.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {spec!r}; choose one of {sorted(OPTIMIZERS)} or pass a callable")
        accepted = set(inspect.signature(OPTIMIZERS[spec.lower()]).parameters) - {"params", "lr"}
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise ValueError(
                f"optimizer {spec!r} does not take {unknown}; it takes {sorted(accepted)} (lr is its own setting)"
            )
    elif callable(spec):
        if kwargs:
            raise ValueError(
                "optimizer_kwargs apply to a named optimizer; a callable optimizer takes only (params, lr)"
            )
    else:
        raise TypeError(f"optimizer must be a name or a callable (params, lr) -> Optimizer, got {type(spec).__name__}")


def build_optimizer(
    spec: OptimizerSpec, params: Iterable[torch.nn.Parameter], lr: float, kwargs: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """The optimizer over ``params`` that ``spec`` describes (see the module docstring)."""
    check_optimizer(spec, kwargs)
    params = list(params)
    if isinstance(spec, str):
        name = spec.lower()
        if name in FUSED_BY_DEFAULT and fusable(params, kwargs):
            kwargs = {**kwargs, "fused": True}
        return OPTIMIZERS[name](params, lr=lr, **kwargs)
    optimizer = spec(params, lr)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"the optimizer factory returned {type(optimizer).__name__}, not a torch.optim.Optimizer")
    return optimizer


def describe_optimizer(spec: OptimizerSpec, kwargs: Mapping[str, Any]) -> dict:
    """A JSON-able description (for ``config.json`` and the resume check)."""
    if isinstance(spec, str):
        return {"name": spec.lower(), "kwargs": dict(kwargs)}
    return {"name": f"<{getattr(spec, '__qualname__', type(spec).__qualname__)}>", "kwargs": {}}
