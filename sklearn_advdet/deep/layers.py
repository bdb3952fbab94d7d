"""Which modules of a model to hook: layer presets and :func:`resolve_layers`."""

import re

__all__ = ["resolve_layers", "LAYER_PRESETS"]


_RESNET50_BLOCKS = tuple(
    f"layer{s}.{i}" for s, n in ((1, 3), (2, 4), (3, 6), (4, 3)) for i in range(n)
)


def _stage_blocks(model, stages=None):
    """Names ``[prefix.]layer<s>.<i>`` in forward (stage, index) order."""
    found = {}
    for name, _ in model.named_modules():
        m = re.fullmatch(r"(?:(.*)\.)?layer(\d+)\.(\d+)", name)
        if m and (stages is None or int(m.group(2)) in stages):
            found.setdefault(m.group(1) or "", []).append(
                (int(m.group(2)), int(m.group(3)), name))
    if len(found) > 1:
        raise ValueError(
            f"several module trees hold layer<s>.<i> blocks (prefixes "
            f"{sorted(found)}): pass layers= as a list of module names"
        )
    return [n for _, _, n in sorted(next(iter(found.values()), []))]


def _preset_cifar_resnet(model):
    names = _stage_blocks(model, stages={1, 2, 3})
    if not names:
        raise ValueError(
            "preset 'cifar_resnet' needs modules named layer1.0 ... layer3.<n-1> "
            "(every basic block); this model has none"
        )
    return names


def _preset_resnet50(model):
    modules = dict(model.named_modules())
    prefixes = {n[: -len("layer1.0")] for n in modules if n.endswith("layer1.0")}
    for prefix in sorted(prefixes, key=len):
        names = [prefix + b for b in _RESNET50_BLOCKS]
        if all(n in modules for n in names):
            return names
    raise ValueError(
        "preset 'resnet50' needs the 16 bottlenecks layer1.0-2, layer2.0-3, "
        "layer3.0-5, layer4.0-2; this model lacks some of them"
    )


def _preset_inception_v3(model):
    names = [
        n for n, _ in model.named_modules()
        if re.fullmatch(r"(?:.*\.)?Mixed_\w+", n)
        and not re.search(r"Mixed_\w+\.", n)
    ]
    if not names:
        raise ValueError(
            "preset 'inception_v3' needs modules named Mixed_5b ... Mixed_7c; "
            "this model has none"
        )
    return names


#: Layer presets by name: each maps a model to the module names to hook.
LAYER_PRESETS = {
    "cifar_resnet": _preset_cifar_resnet,
    "resnet50": _preset_resnet50,
    "inception_v3": _preset_inception_v3,
}


def resolve_layers(model, layers="auto"):
    """Module names to hook, from a preset name, "auto" or a list.

    Parameters
    ----------
    model : torch.nn.Module
    layers : "auto", str or list of str, default="auto"
        * a list of module names as given by ``model.named_modules()``, hooked
          (and laid out in ``X``) in the order given;
        * a preset: ``"cifar_resnet"`` (every basic block ``layer1.0`` ...
          ``layer3.<n-1>``), ``"resnet50"`` (the 16 bottlenecks ``layer1.0``
          ... ``layer4.2``), ``"inception_v3"`` (the ``Mixed_*`` modules);
        * ``"auto"``: the model's ``feature_layers`` attribute when it has
          one, else the Inception mixed layers, else every ``layer<s>.<i>``
          block (ResNets); otherwise an error asking for a list;
        * a single module name.

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> from sklearn_advdet.deep.models import cifar_resnet
    >>> from sklearn_advdet.deep.layers import resolve_layers
    >>> resolve_layers(cifar_resnet(20), "cifar_resnet")[-2:]
    ['layer3.1', 'layer3.2']
    """
    if isinstance(layers, str):
        if layers in LAYER_PRESETS:
            names = LAYER_PRESETS[layers](model)
        elif layers == "auto":
            names = getattr(model, "feature_layers", None)
            if names is None:
                modules = dict(model.named_modules())
                if any(re.fullmatch(r"(?:.*\.)?Mixed_\w+", n) for n in modules):
                    names = _preset_inception_v3(model)
                else:
                    names = _stage_blocks(model)
            if not names:
                raise ValueError(
                    f"layers='auto' found no preset for {type(model).__name__}: "
                    "pass layers= as a list of module names, e.g. "
                    f"{[n for n, _ in model.named_modules() if n][:4]}"
                )
            names = list(names)
        else:
            names = [layers]
    else:
        try:
            names = [str(n) for n in layers]
        except TypeError:
            raise TypeError(
                "layers must be 'auto', a preset name "
                f"{sorted(LAYER_PRESETS)} or a list of module names, got {layers!r}"
            ) from None
    if not names:
        raise ValueError("layers selects no module: pass at least one name")
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(
            f"{type(model).__name__} has no module(s) {unknown}: layer names "
            "come from model.named_modules(), e.g. "
            f"{[n for n in modules if n][:6]}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"layers lists a module twice: {names}")
    return names

