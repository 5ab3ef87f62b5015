"""Warming a node process up: what a first round would otherwise import on its critical path."""

import threading

import torch

__all__ = ["warm_up", "warm_up_in_background"]


def warm_up() -> None:
    """Build and step a one-value optimizer once, so torch's lazy imports happen now.

    The first ``torch.optim`` optimizer of a process imports ``torch._dynamo`` (about a second
    here); a node that does this while it waits for work spares its first round that cost.
    Idempotent and cheap after the first call.
    """
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([weight], lr=0.0)
    weight.grad = torch.zeros(1)
    optimizer.step()


def warm_up_in_background() -> threading.Thread:
    """Run ``warm_up`` on a daemon thread (it holds the import lock, so a round that starts
    meanwhile just waits for the imports it would have done itself); return the thread."""
    thread = threading.Thread(target=_quietly, name="fedpipe-warm-up", daemon=True)
    thread.start()
    return thread


def _quietly() -> None:
    try:
        warm_up()
    except Exception:  # an optimisation only: a failure here shows again, with context, in a round
        return
