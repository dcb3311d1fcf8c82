"""Choosing the torch device: CUDA, then Apple MPS, then CPU, unless the user says otherwise."""

from __future__ import annotations

from .errors import DblurDoseError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto"):
    """A ``torch.device`` for ``name`` ('auto', 'cpu', 'cuda', 'cuda:N' or 'mps')."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DblurDoseError("--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu")
        return torch.device(name)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DblurDoseError("--device mps was asked for but Apple MPS is not available; use --device auto or cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise DblurDoseError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")


def memory_budget_bytes(device, requested: float | None = None) -> float:
    """Working-memory budget for one computation on ``device`` (bytes)."""
    if requested is not None:
        return float(requested)
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return 0.7 * free
    return 3.0e9  # keeps a 512x512x130 CT grid well inside 4 GB of process memory
