"""CIFAR-10 ResNets (He et al. 2016, section 4.2) that load published weights.

The networks take RGB images in ``[0, 1]`` and normalise them *inside* the
model (mean ``(0.485, 0.456, 0.406)``, std ``(0.229, 0.224, 0.225)``), so that
attacks can work in pixel space with epsilons in ``[0, 1]`` units.

Module names are chosen so that feature-extraction presets are simple:
``conv1``, ``bn1``, the basic blocks ``layer1.0`` ... ``layer3.{n-1}`` and
the classifier ``linear`` (the same names as the state dicts of
akamaster/pytorch_resnet_cifar10, without their ``module.`` prefix).
"""

import re
from os import PathLike

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CifarResNet", "BasicBlock", "cifar_resnet", "CIFAR_MEAN", "CIFAR_STD",
           "CIFAR10_CLASSES"]

#: Normalisation applied inside the model (the ImageNet statistics that the
#: published CIFAR weights were trained with).
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)

#: Class names in class-index order (sorted folder names of the ImageFolder
#: layout).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")

_DEPTHS = (20, 32, 44, 56, 110)


class _ShortcutA(nn.Module):
    """Option-A shortcut: stride-2 subsampling and zero-padded new channels."""

    def __init__(self, in_planes, planes):
        super().__init__()
        self.pad = (planes - in_planes) // 2

    def forward(self, x):
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or option-A) shortcut."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(in_planes, planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images: 3 stages of n basic blocks.

    Parameters
    ----------
    depth : {20, 32, 44, 56, 110}, default=20
        Network depth; ``n = (depth - 2) / 6`` blocks per stage.
    num_classes : int, default=10
        Width of the final linear layer.

    Attributes
    ----------
    arch : str
        ``"resnet<depth>"``; recorded in feature-store manifests.
    feature_layers : list of str
        Names of every basic block in forward order (what
        ``FeatureExtractor(layers="auto")`` hooks).
    """

    def __init__(self, depth=20, num_classes=10):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(
                f"depth must be one of {_DEPTHS} (6n+2 with the published n), "
                f"got {depth!r}"
            )
        n = (depth - 2) // 6
        self.depth = depth
        self.arch = f"resnet{depth}"
        self.register_buffer(
            "mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1), persistent=False
        )
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        self.feature_layers = [
            f"layer{s}.{i}" for s in (1, 2, 3) for i in range(n)
        ]
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = (x - self.mean) / self.std
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _blocks_per_stage(state_dict):
    counts = {}
    for key in state_dict:
        m = re.match(r"layer([1-3])\.(\d+)\.", key)
        if m:
            s, i = int(m.group(1)), int(m.group(2))
            counts[s] = max(counts.get(s, 0), i + 1)
    return counts


def _load_state_dict(weights, map_location):
    if isinstance(weights, (str, PathLike)):
        obj = torch.load(weights, map_location=map_location, weights_only=True)
    else:
        obj = weights
    if not isinstance(obj, dict):
        raise TypeError(
            "weights must be a path to a .th/.pt file or a state dict, got "
            f"{type(obj).__name__}"
        )
    state = obj.get("state_dict", obj)
    return {
        (k[len("module."):] if k.startswith("module.") else k): v
        for k, v in state.items()
    }


def cifar_resnet(depth=20, weights=None, map_location="cpu", num_classes=10):
    """Build a CIFAR-10 ResNet and optionally load published weights.

    Parameters
    ----------
    depth : {20, 32, 44, 56, 110}, default=20
        Network depth. Must match the weights when they are given.
    weights : str, path-like or dict, default=None
        A checkpoint as saved by akamaster/pytorch_resnet_cifar10 (a dict with
        ``best_prec1`` and ``state_dict`` whose keys carry a ``module.``
        prefix), a bare state dict, or None for random initialisation. Files
        are read with ``torch.load(..., weights_only=True)``.
    map_location : str or torch.device, default="cpu"
        Passed to :func:`torch.load`.
    num_classes : int, default=10
        Width of the classifier.

    Returns
    -------
    model : CifarResNet
        In eval mode. It expects RGB images in ``[0, 1]`` of shape
        ``(N, 3, 32, 32)`` and normalises them itself.

    Raises
    ------
    ValueError
        When the weights are for another depth or do not fit the
        architecture.

    Examples
    --------
    >>> import torch
    >>> from sklearn_advdet.deep.models import cifar_resnet
    >>> model = cifar_resnet(depth=20)
    >>> model(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> model.feature_layers[:4]
    ['layer1.0', 'layer1.1', 'layer1.2', 'layer2.0']
    """
    model = CifarResNet(depth=depth, num_classes=num_classes)
    if weights is not None:
        state = _load_state_dict(weights, map_location)
        counts = _blocks_per_stage(state)
        n = (depth - 2) // 6
        if counts and set(counts.values()) == {counts.get(1)} and len(counts) == 3:
            found = 6 * counts[1] + 2
            if found != depth:
                raise ValueError(
                    f"the weights are for a ResNet-{found} ({counts[1]} blocks "
                    f"per stage) but depth={depth} ({n} blocks per stage): "
                    f"pass depth={found}"
                )
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"the weights do not fit a CIFAR ResNet-{depth} with "
                f"{num_classes} classes: {exc}"
            ) from None
    return model.eval()
