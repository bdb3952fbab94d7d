"""A small CNN for scikit-learn's 8x8 digits, trained deterministically on CPU.

The model takes images of shape ``(N, 1, 8, 8)`` with values in [0, 1], i.e.
``sklearn.datasets.load_digits().images / 16``, and returns 10 logits.  Its
hookable blocks are named modules (``conv1``, ``conv2``, ``conv3``, ``fc1``;
each ends with its ReLU, so a forward hook sees the activation), listed in
:data:`DIGITS_LAYERS` in forward order, which is what
:class:`sklearn_advdet.deep.extraction.FeatureExtractor` hooks by default for
the embedded data set.

Training is seeded by a private :class:`torch.Generator` (weight
initialisation and mini-batch shuffling); it neither reads nor changes torch's
global random state, so two runs with the same ``random_state`` give the same
weights on the same machine.
"""

import contextlib
import math

import numpy as np
import torch
from torch import nn

__all__ = [
    "DIGITS_LAYERS",
    "DigitsCNN",
    "as_digit_images",
    "train_digits_cnn",
    "digits_cnn_accuracy",
    "torch_threads",
]

#: Names of the hidden blocks hooked by default, in forward order.
DIGITS_LAYERS = ("conv1", "conv2", "conv3", "fc1")

_SEED_MAX = 2**31 - 1


class DigitsCNN(nn.Module):
    """Small convolutional classifier for 8x8 grey-level digits.

    ============  ==============================  ==============
    module        layers                          output
    ============  ==============================  ==============
    ``conv1``     3x3 conv (16), ReLU             16 x 8 x 8
    ``conv2``     3x3 conv (32), ReLU             32 x 8 x 8
    ``pool``      2x2 max-pool                    32 x 4 x 4
    ``conv3``     3x3 conv (64), ReLU             64 x 4 x 4
    ``fc1``       flatten, linear (128), ReLU     128
    ``fc2``       linear (10): the logits         10
    ============  ==============================  ==============

    Parameters
    ----------
    n_classes : int, default=10
        Number of output logits.
    random_state : int or None, default=None
        Seed of the weight initialisation (a private torch.Generator; the
        global torch random state is left untouched). ``None`` draws one
        from numpy's global generator.

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.digits import DigitsCNN
    >>> model = DigitsCNN(random_state=0)
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    #: hooked by ``FeatureExtractor(model, layers="auto")``
    feature_layers = list(DIGITS_LAYERS)

    def __init__(self, n_classes=10, random_state=None):
        super().__init__()
        # the default initialisation of nn layers draws from the global torch
        # generator; fork it so that building a model never changes it.
        with torch.random.fork_rng(devices=[]):
            self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
            self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
            self.pool = nn.MaxPool2d(2)
            self.conv3 = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU())
            self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU())
            self.fc2 = nn.Linear(128, n_classes)
        self.reset_parameters(random_state)

    def reset_parameters(self, random_state=None):
        """Re-initialise all weights from a seeded private generator.

        Same scheme as torch's defaults for ``Conv2d``/``Linear`` (Kaiming
        uniform with ``a=sqrt(5)``, bias uniform in +/- 1/sqrt(fan_in)).
        """
        gen = torch.Generator().manual_seed(_seed_from(random_state))
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                with torch.no_grad():
                    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=gen)
                    fan_in = module.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in)
                    nn.init.uniform_(module.bias, -bound, bound, generator=gen)
        return self

    def forward(self, x):
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.pool(x)
        x = self.conv3(x)
        x = self.fc1(x)
        return self.fc2(x)


def _seed_from(random_state):
    """An int seed for torch from an int, None or a numpy RandomState."""
    if random_state is None or isinstance(random_state, np.random.RandomState):
        rs = np.random.mtrand._rand if random_state is None else random_state
        return int(rs.randint(_SEED_MAX))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(_SEED_MAX))
    try:
        seed = int(random_state)
    except (TypeError, ValueError):
        raise TypeError(
            "random_state must be an int, None or a numpy RandomState, got "
            f"{random_state!r}"
        ) from None
    if seed < 0:
        raise ValueError(f"random_state must be non-negative, got {seed}")
    return seed


def as_digit_images(X):
    """Turn digits data into a float32 array of shape ``(N, 1, 8, 8)``.

    Parameters
    ----------
    X : array-like of shape (N, 64), (N, 8, 8) or (N, 1, 8, 8)
        Pixel values in [0, 1] (``load_digits().images / 16``).  A numpy
        array or a torch tensor.

    Returns
    -------
    ndarray of shape (N, 1, 8, 8), dtype float32
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 2 and X.shape[1] == 64:
        X = X.reshape(-1, 1, 8, 8)
    elif X.ndim == 3 and X.shape[1:] == (8, 8):
        X = X[:, None]
    elif not (X.ndim == 4 and X.shape[1:] == (1, 8, 8)):
        raise ValueError(
            f"digits images must have shape (N, 64), (N, 8, 8) or (N, 1, 8, 8), "
            f"got {X.shape}"
        )
    if X.size and (X.min() < 0.0 or X.max() > 1.0):
        raise ValueError(
            "digits pixel values must lie in [0, 1]: divide load_digits() data "
            f"by 16 (got values in [{X.min():g}, {X.max():g}])"
        )
    return np.ascontiguousarray(X)


def train_digits_cnn(
    X,
    y,
    *,
    epochs=30,
    batch_size=64,
    lr=2e-3,
    weight_decay=1e-4,
    random_state=0,
    device="cpu",
    n_threads=1,
):
    """Train a :class:`DigitsCNN` on digits images.

    Deterministic on CPU: weight initialisation and the order of the
    mini-batches come from one private ``torch.Generator`` seeded by
    ``random_state``; the global torch and numpy random states are neither
    read (for an int ``random_state``) nor changed.

    Parameters
    ----------
    X : array-like of shape (N, 64), (N, 8, 8) or (N, 1, 8, 8)
        Training images with values in [0, 1] (``load_digits().images / 16``).
    y : array-like of shape (N,)
        Class labels 0..9.
    epochs : int, default=30
        Passes over the training data.
    batch_size : int, default=64
        Mini-batch size.
    lr : float, default=2e-3
        Adam learning rate (halved at 50 % and 75 % of the epochs).
    weight_decay : float, default=1e-4
        Adam L2 penalty.
    random_state : int, default=0
        Seed of initialisation and shuffling.
    device : str or torch.device, default="cpu"
        Where to train.  Only CPU training is guaranteed bit-for-bit
        reproducible.
    n_threads : int or None, default=1
        Torch intra-op threads for the run (restored afterwards).  The model
        is so small that more threads only add synchronisation overhead (and
        on a busy machine a lot of it); a fixed count also keeps the float
        reductions, hence the weights, the same on machines with different
        core counts.  None leaves torch's setting alone.

    Returns
    -------
    model : DigitsCNN
        The trained model on ``device``, in eval mode.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn_advdet.deep.digits import train_digits_cnn
    >>> digits = load_digits()
    >>> model = train_digits_cnn(digits.images[:200] / 16, digits.target[:200],
    ...                          epochs=2, random_state=0)
    >>> model.training
    False
    """
    X = as_digit_images(X)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"y must be 1-D with one label per image: X has {X.shape[0]} images, "
            f"y has shape {y.shape}"
        )
    if X.shape[0] == 0:
        raise ValueError("cannot train on an empty set of images")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y must hold integer class labels 0..9")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() > 9:
        raise ValueError(f"y must hold class labels 0..9, got range [{y.min()}, {y.max()}]")
    epochs = int(epochs)
    batch_size = int(batch_size)
    if epochs < 1 or batch_size < 1:
        raise ValueError(
            f"epochs and batch_size must be positive, got {epochs} and {batch_size}"
        )

    seed = _seed_from(random_state)
    device = torch.device(device)
    with torch_threads(n_threads):
        return _train(X, y, epochs, batch_size, lr, weight_decay, seed, device)


def _train(X, y, epochs, batch_size, lr, weight_decay, seed, device):
    gen = torch.Generator().manual_seed(seed)
    model = DigitsCNN(random_state=seed)
    model.to(device)
    Xt = torch.from_numpy(X).to(device)
    yt = torch.from_numpy(y).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    milestones = sorted({max(1, epochs // 2), max(1, (3 * epochs) // 4)})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.5)
    loss_fn = nn.CrossEntropyLoss()
    n = X.shape[0]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    return model


@contextlib.contextmanager
def torch_threads(n_threads):
    """Set torch's intra-op thread count for a block, then restore it.

    ``None`` leaves the setting alone.
    """
    if n_threads is None:
        yield
        return
    n_threads = int(n_threads)
    if n_threads < 1:
        raise ValueError(f"n_threads must be a positive int or None, got {n_threads}")
    old = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def digits_cnn_accuracy(model, X, y, *, batch_size=1024):
    """Fraction of the images in ``X`` that ``model`` classifies as ``y``."""
    X = as_digit_images(X)
    y = np.asarray(y)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds = []
    try:
        with torch.no_grad():
            for start in range(0, X.shape[0], batch_size):
                xb = torch.from_numpy(X[start : start + batch_size]).to(device)
                preds.append(model(xb).argmax(1).cpu().numpy())
    finally:
        model.train(was_training)
    pred = np.concatenate(preds) if preds else np.empty(0, dtype=np.int64)
    return float(np.mean(pred == y))
