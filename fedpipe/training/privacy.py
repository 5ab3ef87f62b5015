"""Differential privacy: central DP (clip the update, add Gaussian noise) natively, local DP-SGD via Opacus."""

import math
import secrets
from collections.abc import Mapping
from typing import Any

import torch

from fedpipe.args import DpArgs
from fedpipe.training.errors import PlanError

__all__ = ["add_central_noise", "clip_update", "make_private", "opacus_available", "prepare_local_dp_model"]


def clip_update(update: Mapping[str, torch.Tensor], clip: float) -> tuple[dict[str, torch.Tensor], float]:
    """Scale the update so that its global L2 norm is at most ``clip``; return it and the norm before.

    >>> clipped, norm = clip_update({"w": torch.tensor([3.0, 4.0])}, 1.0)
    >>> norm, [round(v, 3) for v in clipped["w"].tolist()]
    (5.0, [0.6, 0.8])
    """
    if not update:
        return {}, 0.0
    norm = math.sqrt(sum(float((u.detach().double() ** 2).sum()) for u in update.values()))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {name: u * scale for name, u in update.items()}, norm


def add_central_noise(
    initial: Mapping[str, torch.Tensor],
    params: Mapping[str, torch.Tensor],
    dp: DpArgs,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """``initial + clip(params - initial) + sigma * clip * N(0, 1)``: the released parameters.

    The noise generator is seeded from the OS unless one is given: a seed the researcher knows
    (``random_seed``) must never drive privacy noise.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(secrets.randbits(63))
    clipped, _ = clip_update(
        {n: params[n].detach() - initial[n].to(params[n].device) for n in params}, dp.clip
    )
    released: dict[str, torch.Tensor] = {}
    for name, delta in clipped.items():
        noise = torch.randn(delta.shape, generator=gen, dtype=torch.float64) * (dp.sigma * dp.clip)
        base = initial[name].to(delta.device)
        released[name] = (base + delta + noise.to(device=delta.device, dtype=delta.dtype)).to(base.dtype)
    return released


def opacus_available() -> bool:
    """Whether the optional Opacus package (local DP-SGD) can be imported."""
    try:
        import opacus  # noqa: F401
    except ImportError:
        return False
    return True


def _require_opacus() -> Any:
    try:
        import opacus
    except ImportError as err:
        raise PlanError(
            "local differential privacy needs the optional Opacus package (install fedpipe[dp])"
        ) from err
    return opacus


def prepare_local_dp_model(model: torch.nn.Module) -> torch.nn.Module:
    """Replace the layers DP-SGD cannot handle (e.g. BatchNorm) with Opacus' validator."""
    opacus = _require_opacus()
    validator = opacus.validators.ModuleValidator
    fixed = validator.fix(model) if validator.validate(model, strict=False) else model
    if not isinstance(fixed, torch.nn.Module):
        raise PlanError("Opacus could not make the model compatible with DP-SGD")
    return fixed


def make_private(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Any, dp: DpArgs
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    """Wrap model, optimizer and loader for DP-SGD (per-sample clipping ``clip``, noise ``sigma``).

    The noise comes from a generator seeded by the OS, not from torch's global generator, which
    ``post_init`` seeds with the researcher's ``random_seed``.
    """
    opacus = _require_opacus()
    engine = opacus.PrivacyEngine(accountant="rdp")
    wrapped: tuple[torch.nn.Module, torch.optim.Optimizer, Any] = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=dp.sigma,
        max_grad_norm=dp.clip,
        # the global torch RNG is seeded with the researcher's random_seed: never let it drive noise
        noise_generator=torch.Generator().manual_seed(secrets.randbits(63)),
    )
    return wrapped
