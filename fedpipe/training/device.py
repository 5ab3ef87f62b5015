"""Choosing the training device from the node's GPU policy and the researcher's ``use_gpu`` (§4.4)."""

import torch
from attrs import frozen

from fedpipe.settings import GpuPolicy

__all__ = ["DeviceChoice", "select_device"]


@frozen(kw_only=True)
class DeviceChoice:
    """The device to train on and what the node log should say about the choice."""

    device: torch.device
    messages: tuple[str, ...] = ()


def select_device(
    policy: GpuPolicy,
    use_gpu: bool,
    *,
    cuda_available: bool | None = None,
    device_count: int | None = None,
) -> DeviceChoice:
    """CUDA when ``available and ((use_gpu and gpu) or gpu_only)``, else the CPU.

    The CUDA device is ``cuda:<gpu_num>`` when ``gpu_num`` names an existing device, plain ``cuda``
    (with a message) otherwise. ``gpu_only`` without CUDA trains on the CPU with an error message,
    as the reference does. Availability may be injected for tests.

    >>> select_device(GpuPolicy(gpu=True, gpu_num=1), True, cuda_available=True, device_count=2).device
    device(type='cuda', index=1)
    >>> choice = select_device(GpuPolicy(gpu=False), True, cuda_available=True, device_count=1)
    >>> choice.device, choice.messages
    (device(type='cpu'), ('the researcher asked for a GPU but the node does not allow it: training on the CPU',))
    """
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    messages: list[str] = []
    if policy.gpu_only and not available:
        messages.append(
            "the node requires the GPU (gpu_only) but no CUDA device is available: training on the CPU"
        )
    elif policy.gpu_only and not use_gpu:
        messages.append(
            "the node forces training on the GPU (gpu_only) although the researcher did not ask for it"
        )
    elif use_gpu and not policy.use_cuda(requested=True, cuda_available=available):
        reason = "no CUDA device is available" if available is False else "the node does not allow it"
        messages.append(f"the researcher asked for a GPU but {reason}: training on the CPU")
    if not policy.use_cuda(requested=use_gpu, cuda_available=available):
        return DeviceChoice(device=torch.device("cpu"), messages=tuple(messages))
    count = torch.cuda.device_count() if device_count is None else device_count
    if policy.gpu_num is not None and policy.gpu_num in range(count):
        return DeviceChoice(device=torch.device("cuda", policy.gpu_num), messages=tuple(messages))
    if policy.gpu_num is not None:
        messages.append(
            f"GPU number {policy.gpu_num} does not exist ({count} devices): using the default CUDA device"
        )
    return DeviceChoice(device=torch.device("cuda"), messages=tuple(messages))
