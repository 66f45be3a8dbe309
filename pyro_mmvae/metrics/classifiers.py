"""Label classifiers of single modalities: coherence judges and feature networks for FID/MFD.

- :class:`Classifier` wraps a network: ``clf(x (N, *shape)) -> labels (N,)`` int64, ``clf.logits(x) -> (N, K)``
  and ``clf.features(x) -> (N, F)`` (the penultimate layer), always in eval mode, without gradients, in
  chunks of ``batch_size`` rows on the classifier's device (results come back on the input's device).
- Networks by architecture name (:data:`ARCHITECTURES`): ``"polymnist"``, ``"mnist"``, ``"svhn"`` and
  ``"text"`` reproduce the layouts (and so the state-dict keys) of the MoPoE authors' released classifiers;
  ``"conv"`` (any ``(C, H, W)``) and ``"mlp"`` (any shape) are generic nets for :func:`train_classifier`.
- Loaders of the shipped pretrained classifiers: :func:`load_polymnist_classifiers` (m0..m4, inputs
  ``(3, 28, 28)`` in [0, 1]) and :func:`load_mnist_svhn_text_classifiers` (mnist ``(1, 28, 28)`` and svhn
  ``(3, 32, 32)`` in [0, 1]; text one-hot ``(8, 71)`` over MoPoE's alphabet).
- :func:`train_classifier` for datasets without published classifiers (Translated PolyMNIST, MHD feature
  nets), :func:`save_classifier` / :func:`load_classifier` for its small files (architecture name, input
  shape, state dict).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..data.dataset import get_batch, iterate_batches
from ..errors import InputError, InputTypeError, UnknownModalityError, check_float, check_int
from ..utils import atomic_write, resolve_device

FILE_FORMAT = "pyro_mmvae.classifier"
FILE_VERSION = 1
POLYMNIST_FILES = {f"m{i}": f"pretrained_img_to_digit_clf_m{i}" for i in range(5)}
# modality -> (file, architecture, input shape) of MoPoE's MNIST-SVHN-Text classifiers
MNIST_SVHN_TEXT_FILES = {
    "mnist": ("clf_m1", "mnist", (1, 28, 28)),
    "svhn": ("clf_m2", "svhn", (3, 32, 32)),
    "text": ("clf_m3", "text", (8, 71)),
}


# ----------------------------------------------------------------------------------------------- networks
class ClassifierNet(nn.Module):
    """A classifier network split in two: ``features(x) -> (N, F)`` and ``head(h) -> logits (N, K)``."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _flat_size(trunk, input_shape: Sequence[int], owner: nn.Module | None = None) -> int:
    """Number of features ``trunk`` makes of one input of ``input_shape`` (by a dry run; ``owner`` is put in
    eval mode meanwhile, so the run leaves batch-norm statistics untouched)."""
    if owner is not None:
        owner.eval()
    with torch.no_grad():
        n = int(trunk(torch.zeros(2, *input_shape)).reshape(2, -1).shape[1])
    if owner is not None:
        owner.train()
    return n


def _need_rank(architecture: str, input_shape: Sequence[int], rank: int, what: str) -> None:
    if len(input_shape) != rank:
        raise InputError(f"architecture {architecture!r} needs {what} inputs, got input shape {tuple(input_shape)}")


class PolyMNISTNet(ClassifierNet):
    """The PolyMNIST digit classifier of the MoPoE authors (one ``encoder`` Sequential, keys encoder.0/3/7/10).

    Conv(C→10, k4 s2 p1), Dropout2d, ReLU, Conv(10→20, k4 s2 p1), Dropout2d, ReLU, Flatten,
    Linear(→128), Dropout, ReLU, Linear(128→K); features: the 128 units after the last ReLU.
    """

    def __init__(self, input_shape=(3, 28, 28), num_classes: int = 10):
        super().__init__()
        _need_rank("polymnist", input_shape, 3, "image (C, H, W)")
        convs = [
            nn.Conv2d(input_shape[0], 10, 4, 2, 1),
            nn.Dropout2d(0.5),
            nn.ReLU(),
            nn.Conv2d(10, 20, 4, 2, 1),
            nn.Dropout2d(0.5),
            nn.ReLU(),
            nn.Flatten(),
        ]
        flat = _flat_size(nn.Sequential(*convs), input_shape)
        self.encoder = nn.Sequential(
            *convs, nn.Linear(flat, 128), nn.Dropout(0.5), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def features(self, x):
        return self.encoder[:-1](x)

    def head(self, h):
        return self.encoder[-1](h)


class MNISTNet(ClassifierNet):
    """MoPoE's MNIST classifier: three Conv(k4 s2, no padding)+ReLU (28→13→5→1), dropout, Linear(128→K)."""

    def __init__(self, input_shape=(1, 28, 28), num_classes: int = 10):
        super().__init__()
        _need_rank("mnist", input_shape, 3, "image (C, H, W)")
        self.conv1 = nn.Conv2d(input_shape[0], 32, kernel_size=4, stride=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=4, stride=2)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=4, stride=2)
        self.dropout = nn.Dropout(0.5)
        self.linear = nn.Linear(_flat_size(self._trunk, input_shape), num_classes)

    def _trunk(self, x):
        for conv in (self.conv1, self.conv2, self.conv3):
            x = torch.relu(conv(x))
        return x.flatten(1)

    def features(self, x):
        return self.dropout(self._trunk(x))

    def head(self, h):
        return self.linear(h)


class SVHNNet(ClassifierNet):
    """MoPoE's SVHN classifier: four Conv(k4 s2; padding 1, 1, 1, 0)+BatchNorm+ReLU (32→16→8→4→1),
    dropout after every conv (before its batch norm, as published), Linear(128→K)."""

    def __init__(self, input_shape=(3, 32, 32), num_classes: int = 10):
        super().__init__()
        _need_rank("svhn", input_shape, 3, "image (C, H, W)")
        widths = [input_shape[0], 32, 64, 64, 128]
        for i, pad in enumerate((1, 1, 1, 0), start=1):
            setattr(self, f"conv{i}", nn.Conv2d(widths[i - 1], widths[i], kernel_size=4, stride=2, padding=pad))
            setattr(self, f"bn{i}", nn.BatchNorm2d(widths[i]))
        self.dropout = nn.Dropout(0.5)
        self.linear = nn.Linear(_flat_size(self.features, input_shape, owner=self), num_classes)

    def features(self, x):
        for i in range(1, 5):
            x = torch.relu(getattr(self, f"bn{i}")(self.dropout(getattr(self, f"conv{i}")(x))))
        return x.flatten(1)

    def head(self, h):
        return self.linear(h)


class _ResBlock1d(nn.Module):
    """MoPoE's pre-activation 1-D residual block: ``downsample(x) + 0.3 · conv2(relu(bn2(conv1(relu(bn1(x))))))``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.bn1 = nn.BatchNorm1d(c_in)
        self.conv1 = nn.Conv1d(c_in, c_in, kernel_size=1)
        self.bn2 = nn.BatchNorm1d(c_in)
        self.conv2 = nn.Conv1d(c_in, c_out, kernel_size=kernel, stride=stride, padding=padding)
        self.downsample = nn.Sequential(nn.Conv1d(c_in, c_out, kernel, stride, padding), nn.BatchNorm1d(c_out))

    def forward(self, x):
        h = self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        return self.downsample(x) + 0.3 * h


class TextNet(ClassifierNet):
    """MoPoE's text classifier over a one-hot sequence ``(L, A)`` (L=8, A=71): Conv1d(A→128, k1), residual
    blocks 128→192 (k4 s2 p1) and 192→128 (k4 s2 p0) along the sequence (8→4→1), dropout, Linear(128→K)."""

    def __init__(self, input_shape=(8, 71), num_classes: int = 10):
        super().__init__()
        _need_rank("text", input_shape, 2, "one-hot sequence (L, A)")
        self.conv1 = nn.Conv1d(input_shape[1], 128, kernel_size=1)
        self.resblock_1 = nn.Sequential(_ResBlock1d(128, 192, 4, 2, 1))
        self.resblock_4 = nn.Sequential(_ResBlock1d(192, 128, 4, 2, 0))
        self.dropout = nn.Dropout(0.5)
        self.linear = nn.Linear(_flat_size(self.features, input_shape, owner=self), num_classes)

    def features(self, x):
        # (N, L, A) -> (N, A, L): the alphabet is the channel axis of the 1-D convolutions
        h = self.resblock_4(self.resblock_1(self.conv1(x.transpose(-2, -1))))
        return self.dropout(h.flatten(1))

    def head(self, h):
        return self.linear(h)


class _TrunkHeadNet(ClassifierNet):
    """The generic nets: ``self.trunk`` makes the features, ``self.out`` the logits."""

    def features(self, x):
        return self.trunk(x)

    def head(self, h):
        return self.out(h)


class ConvNet(_TrunkHeadNet):
    """Generic image classifier for any ``(C, H, W)``: six Conv(k3 p1)+BatchNorm+ReLU (32, 32, 64, 64, 128, 128
    channels; stride 2 at every second), global average pooling (so digits anywhere in the image, as in
    Translated PolyMNIST, are seen alike), Linear(128→128)+ReLU (the features), Linear(128→K)."""

    def __init__(self, input_shape, num_classes: int = 10):
        super().__init__()
        _need_rank("conv", input_shape, 3, "image (C, H, W)")
        layers, c = [], input_shape[0]
        for width, stride in ((32, 1), (32, 2), (64, 1), (64, 2), (128, 1), (128, 2)):
            layers += [nn.Conv2d(c, width, 3, stride, 1), nn.BatchNorm2d(width), nn.ReLU()]
            c = width
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 128), nn.ReLU())
        self.out = nn.Linear(128, num_classes)


class MLPNet(_TrunkHeadNet):
    """Generic classifier for inputs of any shape: flatten, Linear(→256)+ReLU, Linear(256→128)+ReLU
    (the features), Linear(128→K)."""

    def __init__(self, input_shape, num_classes: int = 10):
        super().__init__()
        numel = math.prod(input_shape)
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(numel, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        self.out = nn.Linear(128, num_classes)


ARCHITECTURES = {
    "polymnist": PolyMNISTNet,
    "mnist": MNISTNet,
    "svhn": SVHNNet,
    "text": TextNet,
    "conv": ConvNet,
    "mlp": MLPNet,
}


def build_network(architecture: str, input_shape: Sequence[int], num_classes: int = 10) -> ClassifierNet:
    """A freshly initialised network of a named architecture (see :data:`ARCHITECTURES`)."""
    if architecture not in ARCHITECTURES:
        raise InputError(f"unknown classifier architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](tuple(int(s) for s in input_shape), check_int(num_classes, "num_classes", 2))


def default_architecture(input_shape: Sequence[int]) -> str:
    """``"conv"`` for images ``(C, H, W)``, ``"mlp"`` for every other shape."""
    return "conv" if len(input_shape) == 3 else "mlp"


# --------------------------------------------------------------------------------------------- Classifier
class Classifier:
    """A label classifier of one modality: ``clf(x) -> predicted labels (N,)`` int64.

    Args:
        network: an ``nn.Module`` mapping ``(N, *input_shape)`` to logits ``(N, K)``; a
            :class:`ClassifierNet` also gives :meth:`features`.
        input_shape: the shape of one input, checked on every call.
        architecture: the name in :data:`ARCHITECTURES` it was built from (needed by :func:`save_classifier`).
        name: the modality it classifies (used in messages).
        batch_size: rows per forward pass (bounds memory).
        device: where the network runs (``"auto"``: CUDA when present).

    Every call runs in eval mode (dropout off, batch-norm running statistics) under ``torch.no_grad``.
    """

    def __init__(self, network: nn.Module, input_shape: Sequence[int], architecture: str | None = None,
                 name: str | None = None, batch_size: int = 1000, device="cpu"):  # fmt: skip
        self.network = network
        self.input_shape = tuple(int(s) for s in input_shape)
        self.architecture, self.name = architecture, name
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.history: list[dict] = []
        self.to(device)

    def __repr__(self) -> str:
        return f"Classifier(name={self.name!r}, architecture={self.architecture!r}, input_shape={self.input_shape})"

    @property
    def num_classes(self) -> int:
        """K, the number of logits (the out-features of the network's last linear layer)."""
        return int([m for m in self.network.modules() if isinstance(m, nn.Linear)][-1].out_features)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device) -> Classifier:
        self.network.to(resolve_device(device)).eval()
        return self

    def _check(self, x) -> None:
        label = f"classifier {self.name!r}" if self.name else "classifier"
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"{label}: expected a torch.Tensor, got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise InputTypeError(f"{label}: expected floats (images in [0, 1]), got {x.dtype}; uint8 images: x / 255")
        if tuple(x.shape[1:]) != self.input_shape or x.dim() != len(self.input_shape) + 1:
            raise InputError(
                f"{label}: expected shape (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )

    @torch.no_grad()
    def _apply(self, fn, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        self.network.eval()  # again: someone may have called .train() on the network since
        device = self.device
        chunks = [
            fn(x[i : i + self.batch_size].to(device, torch.float32)) for i in range(0, max(len(x), 1), self.batch_size)
        ]
        return torch.cat(chunks).to(x.device)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K)`` (pre-sigmoid/softmax scores; their argmax is the prediction)."""
        return self._apply(self.network, x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations ``(N, F)`` (a feature network for FID/MFD)."""
        if not hasattr(self.network, "features"):
            raise InputError(f"{self!r}: its network has no features() method (wrap a ClassifierNet for features)")
        return self._apply(self.network.features, x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels ``(N,)`` int64."""
        return self.logits(x).argmax(-1)

    def accuracy(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        """Plain accuracy of the predictions on ``x (N, *shape)`` against ``labels (N,)``."""
        return (self(x).cpu() == torch.as_tensor(labels).cpu().long()).float().mean().item()


# ------------------------------------------------------------------------------------------------ loading
def _load_file(path: Path, what: str):
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors have many types; all mean "not a state-dict file"
        raise InputError(f"cannot read {what} {path} as a torch state-dict file: {type(err).__name__}: {err}") from err


def _listed(items: list, limit: int = 10) -> str:
    return f"{items[:limit]}" + (f" and {len(items) - limit} more" if len(items) > limit else "")


def load_network_state(network: nn.Module, state: Mapping, source: str, error: type = InputError) -> None:
    """``network.load_state_dict(state)`` after checking that keys and shapes match exactly.

    Raises ``error`` (an :class:`InputError` by default) naming ``source`` and listing missing keys,
    unexpected keys and shape mismatches (expected vs found). Batch-norm ``num_batches_tracked``
    counters (absent from files saved by old torch versions, unused in eval mode) may be missing.
    """
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise error(f"{source}: expected a state dict (name -> tensor), got {type(state).__name__}")
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(k for k in set(expected) - set(found) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: expected {expected[k]}, found {found[k]}" for k in expected if k in found and expected[k] != found[k]
    ]
    if missing or unexpected or shapes:
        parts = [
            f"missing keys {_listed(missing)}" if missing else "",
            f"unexpected keys {_listed(unexpected)}" if unexpected else "",
            f"shape mismatches {_listed(shapes)}" if shapes else "",
        ]
        listing = f". Expected keys and shapes: {expected}" if len(expected) <= 40 else ""
        raise error(
            f"{source} does not match the {type(network).__name__} architecture: "
            + ", ".join(p for p in parts if p)
            + listing
        )
    state = dict(state)
    for k in set(expected) - set(found):  # only num_batches_tracked counters are left
        state[k] = torch.zeros((), dtype=torch.long)
    network.load_state_dict(state)


def _pretrained_folder(directory, subfolder: str, files) -> Path:
    """``directory``, or its ``subfolder`` when ``directory`` is the parent ``pretrained_classifiers`` folder."""
    directory = Path(directory)
    if not any((directory / f).exists() for f in files) and (directory / subfolder).is_dir():
        return directory / subfolder
    return directory


def _load_pretrained(path: Path, architecture: str, input_shape, name: str, device) -> Classifier:
    network = build_network(architecture, input_shape)
    load_network_state(network, _load_file(path, f"pretrained {name} classifier file"), f"classifier file {path}")
    return Classifier(network, input_shape, architecture=architecture, name=name, device=device)


def load_polymnist_classifiers(directory, device="cpu") -> dict[str, Classifier]:
    """The MoPoE authors' PolyMNIST digit classifiers: ``{"m0": clf, ..., "m4": clf}``.

    Args:
        directory: the folder holding ``pretrained_img_to_digit_clf_m0`` .. ``_m4`` (or its parent holding
            ``polymnist/``, as in ``../shared/data/pretrained_classifiers``).
        device: where they run.

    Inputs are ``(N, 3, 28, 28)`` floats in [0, 1].
    """
    folder = _pretrained_folder(directory, "polymnist", POLYMNIST_FILES.values())
    return {m: _load_pretrained(folder / f, "polymnist", (3, 28, 28), m, device) for m, f in POLYMNIST_FILES.items()}


def load_mnist_svhn_text_classifiers(directory, device="cpu") -> dict[str, Classifier]:
    """MoPoE's MNIST-SVHN-Text classifiers ``{"mnist", "svhn", "text"}`` from ``clf_m1``, ``clf_m2``, ``clf_m3``.

    Args:
        directory: the folder holding the three files (or its parent holding ``mnist_svhn_text/``).
        device: where they run.

    Inputs: mnist ``(N, 1, 28, 28)`` and svhn ``(N, 3, 32, 32)`` floats in [0, 1]; text ``(N, 8, 71)``
    one-hot over MoPoE's 71-character alphabet (the published networks end in a sigmoid; the logits
    here are its input, which has the same argmax).
    """
    folder = _pretrained_folder(directory, "mnist_svhn_text", [f for f, _, _ in MNIST_SVHN_TEXT_FILES.values()])
    return {
        name: _load_pretrained(folder / f, arch, shape, name, device)
        for name, (f, arch, shape) in MNIST_SVHN_TEXT_FILES.items()
    }


# ----------------------------------------------------------------------------------------------- training
def _modality_rows(batch, modality: str, label: str):
    """``(x, y)`` of the rows of ``batch`` where ``modality`` is present."""
    if modality not in batch.data:
        raise UnknownModalityError(f"modality {modality!r} is not in the dataset; it has {batch.names}")
    if label not in batch.labels:
        raise InputError(f"the dataset has no label {label!r}; its labels are {sorted(batch.labels)}")
    rows = batch.present[modality]
    return batch.data[modality][rows], batch.labels[label][rows].long().reshape(-1)


def _train_epoch(network, optimizer, batches, modality: str, label: str, num_classes: int, device):
    """One pass of cross-entropy steps; returns (mean loss, training accuracy) over the rows used."""
    network.train()
    loss_sum = correct = seen = 0
    for batch in batches:
        x, y = _modality_rows(batch, modality, label)
        if len(y) < 2:  # batch norm cannot train on a single row
            continue
        if y.min() < 0 or y.max() >= num_classes:
            raise InputError(f"label {label!r} has values outside 0..{num_classes - 1}: {y.unique().tolist()}")
        x, y = x.to(device, torch.float32), y.to(device)
        logits = network(x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(-1) == y).sum().item()
        seen += len(y)
    if seen == 0:
        raise InputError(f"no training rows: modality {modality!r} is missing in every row (or batches of one row)")
    return loss_sum / seen, correct / seen


def train_classifier(dataset, modality_name: str, label: str = "digit", epochs: int = 5, batch_size: int = 128,
                     lr: float = 1e-3, seed: int = 0, architecture: str | None = None, progress: bool = True,
                     num_classes: int = 10, device="cpu") -> Classifier:  # fmt: skip
    """Train a classifier of ``label`` from modality ``modality_name`` of ``dataset`` (Adam, cross-entropy).

    Args:
        dataset: a ``MultimodalDataset``-like dataset (batches through
            :func:`~pyro_mmvae.data.iterate_batches`); rows where the modality is missing are skipped.
        architecture: a name in :data:`ARCHITECTURES` (default: :func:`default_architecture` of the
            modality's shape; ``"polymnist"`` gives the pretrained PolyMNIST classifiers' layout).
        seed: initialisation, shuffling and dropout are reproducible for a seed (the global RNG is untouched).
        progress: a tqdm bar over epochs with the running loss and accuracy.

    Returns:
        the trained :class:`Classifier` (eval mode); ``clf.history`` lists per-epoch mean loss and
        training accuracy.
    """
    epochs, batch_size = check_int(epochs, "epochs", 1), check_int(batch_size, "batch_size", 2)
    lr = check_float(lr, "lr", positive=True)
    if len(dataset) == 0:
        raise InputError("train_classifier: the dataset is empty")
    first = get_batch(dataset, [0])
    _modality_rows(first, modality_name, label)  # checks the modality and the label exist
    input_shape = tuple(first.data[modality_name].shape[1:])
    architecture = architecture or default_architecture(input_shape)
    device = resolve_device(device)
    history = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        network = build_network(architecture, input_shape, num_classes).to(device)
        optimizer = torch.optim.Adam(network.parameters(), lr=lr)
        bar = tqdm(range(epochs), desc=f"train-classifier[{modality_name}]", unit="epoch", disable=not progress)
        for epoch in bar:
            batches = iterate_batches(dataset, batch_size, shuffle=True, seed=seed, epoch=epoch)
            loss, acc = _train_epoch(network, optimizer, batches, modality_name, label, num_classes, device)
            history.append({"epoch": epoch + 1, "loss": loss, "train_accuracy": acc})
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}")
        bar.close()
    clf = Classifier(network, input_shape, architecture=architecture, name=modality_name, device=device)
    clf.history = history
    return clf


def save_classifier(classifier: Classifier, path) -> Path:
    """Write ``classifier`` to ``path`` atomically: format tag, architecture, input shape, classes, state dict."""
    if classifier.architecture not in ARCHITECTURES:
        raise InputError(
            f"save_classifier: only classifiers of a named architecture ({sorted(ARCHITECTURES)}) can be saved, "
            f"this one has architecture={classifier.architecture!r}; save classifier.network.state_dict() instead"
        )
    state = {k: v.detach().cpu() for k, v in classifier.network.state_dict().items()}
    payload = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "architecture": classifier.architecture,
        "input_shape": list(classifier.input_shape),
        "num_classes": classifier.num_classes,
        "name": classifier.name,
        "history": list(classifier.history),
        "state_dict": state,
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_classifier(path, device="cpu") -> Classifier:
    """A classifier written by :func:`save_classifier` (loaded with ``weights_only=True``)."""
    path = Path(path)
    payload = _load_file(path, "classifier file")
    if not isinstance(payload, Mapping) or payload.get("format") != FILE_FORMAT:
        raise InputError(f"{path} is not a pyro_mmvae classifier file (no format tag {FILE_FORMAT!r})")
    if payload.get("version") != FILE_VERSION:
        raise InputError(
            f"{path}: classifier file version {payload.get('version')!r}, this library reads {FILE_VERSION}"
        )
    network = build_network(payload["architecture"], payload["input_shape"], payload["num_classes"])
    load_network_state(network, payload["state_dict"], f"classifier file {path}")
    clf = Classifier(network, payload["input_shape"], payload["architecture"], payload.get("name"), device=device)
    clf.history = list(payload.get("history", []))
    return clf
