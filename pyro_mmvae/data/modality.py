"""What a modality is: a name, an event shape, a likelihood family and a reconstruction weight.

Every component of the library refers to modalities by name. A :class:`Modality` is the single
description of one of them; models build decoders from it and the data layer validates tensors
against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..errors import InputError, InputTypeError

LIKELIHOODS = ("normal", "laplace", "bernoulli", "categorical", "onehot_categorical")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Modality:
    """Description of one modality.

    Args:
        name: identifier used for the observed Pyro site ``x_<name>``; letters, digits and ``_``.
        shape: event shape of one observation, e.g. ``(1, 32, 32)`` for a grey image,
            ``(25,)`` for a vector. For ``"categorical"`` it is ``()`` (one class index per data
            point) or ``(L,)`` (a sequence of L class indices); for ``"onehot_categorical"`` the
            last entry is the number of classes.
        likelihood: one of ``"normal"``, ``"laplace"``, ``"bernoulli"``, ``"categorical"``,
            ``"onehot_categorical"``.
        scale: for ``"normal"``/``"laplace"``: the fixed observation scale, or the initial value
            of the learned one when ``learn_scale`` is true.
        learn_scale: learn a per-dimension scale (``"normal"``/``"laplace"``).
        num_classes: number of classes for ``"categorical"`` (required there).
        weight: reconstruction weight multiplying ``log p(x_name | z)`` during training only.
    """

    name: str
    shape: tuple[int, ...]
    likelihood: str = "normal"
    scale: float = 1.0
    learn_scale: bool = False
    num_classes: int | None = None
    weight: float = 1.0
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InputError(f"modality name {self.name!r} must be an identifier (letters, digits, '_')")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if any(s < 1 for s in self.shape):
            raise InputError(f"modality {self.name!r}: every entry of shape must be >= 1, got {self.shape}")
        if self.likelihood not in LIKELIHOODS:
            raise InputError(
                f"modality {self.name!r}: unknown likelihood {self.likelihood!r}; expected one of {LIKELIHOODS}"
            )
        if self.likelihood == "categorical" and (self.num_classes is None or self.num_classes < 2):
            raise InputError(f"modality {self.name!r}: 'categorical' needs num_classes >= 2")
        if self.likelihood == "onehot_categorical" and (len(self.shape) == 0 or self.shape[-1] < 2):
            raise InputError(f"modality {self.name!r}: 'onehot_categorical' needs shape (..., K) with K >= 2")
        if self.scale <= 0:
            raise InputError(f"modality {self.name!r}: scale must be positive, got {self.scale}")
        if self.weight < 0:
            raise InputError(f"modality {self.name!r}: weight must be non-negative, got {self.weight}")

    @property
    def is_discrete(self) -> bool:
        return self.likelihood == "categorical"

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def expected_dtype_ok(self, dtype: torch.dtype) -> bool:
        if self.is_discrete:
            return dtype in (torch.int64, torch.int32, torch.int16, torch.uint8)
        return dtype.is_floating_point

    def validate(self, x: torch.Tensor, batch_size: int | None = None) -> None:
        """Check the type, shape ``(B, *shape)`` and dtype of ``x``; raise naming this modality.

        Raises:
            InputTypeError: ``x`` is not a tensor (e.g. a numpy array) or has the wrong dtype
                (floats for ``normal``/``laplace``/``bernoulli``/``onehot_categorical``, integer class
                indices for ``categorical``).
            InputError: the shape differs from ``(B, *shape)`` or the batch size from ``batch_size``.
        """
        if not isinstance(x, torch.Tensor):
            hint = " (convert it with torch.as_tensor(x))" if hasattr(x, "__array__") else ""
            raise InputTypeError(f"modality {self.name!r}: expected a torch.Tensor, got {type(x).__name__}{hint}")
        if tuple(x.shape[1:]) != self.shape or x.dim() != len(self.shape) + 1:
            raise InputError(
                f"modality {self.name!r}: expected shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}"
            )
        if batch_size is not None and x.shape[0] != batch_size:
            raise InputError(f"modality {self.name!r}: batch size {x.shape[0]} differs from the batch's {batch_size}")
        if not self.expected_dtype_ok(x.dtype):
            if self.is_discrete:
                raise InputTypeError(
                    f"modality {self.name!r} ({self.likelihood}): expected an integer (class index) dtype, got "
                    f"{x.dtype}; convert with x.long()"
                )
            raise InputTypeError(
                f"modality {self.name!r} ({self.likelihood}): expected a floating-point dtype, got {x.dtype}; "
                "convert with x.float() (and scale images to [0, 1] for a bernoulli modality)"
            )


def reconstruction_weights(modalities, rule: str = "largest") -> dict[str, float]:
    """Per-modality weights ``w_m ∝ largest numel / numel_m`` (the MoPoE convention), or all ones.

    Returns a dict name -> weight; use ``dataclasses.replace(m, weight=w[m.name])`` to apply.
    """
    if rule == "none":
        return {m.name: 1.0 for m in modalities}
    if rule != "largest":
        raise InputError(f"unknown weighting rule {rule!r}; expected 'largest' or 'none'")
    largest = max(m.numel for m in modalities)
    return {m.name: largest / m.numel for m in modalities}
