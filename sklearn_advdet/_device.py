"""The one device resolver of the package (torch imported lazily).

Every estimator, attack and extractor that takes ``device=`` resolves it
here, so the same value means the same device everywhere and a CUDA request
on a machine without CUDA fails the same way everywhere.
"""

__all__ = ["resolve_device", "module_device"]


def resolve_device(device="auto"):
    """Turn a ``device=`` parameter into a ``torch.device``.

    Parameters
    ----------
    device : "auto", None, str or torch.device, default="auto"
        ``"auto"`` and ``None`` pick CUDA when it is available, else the CPU.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        For a string torch does not parse, or for CUDA on a machine without it.
    """
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:<index>' or a torch.device, "
            f"got {type(device).__name__} {device!r}"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} asks for CUDA but no CUDA device is available: "
            "use device='auto' (CUDA when present, else CPU) or device='cpu'"
        )
    return dev


def module_device(module, default=None):
    """Device of a module's first parameter or buffer (``default`` if it has none)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return default
