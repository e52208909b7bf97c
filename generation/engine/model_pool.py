"""Which models stay loaded: as many as fit a memory budget, the least recently used unloaded
when a job needs another (`SDBOT_GPU_MEMORY_GB`, else the device's memory).

Sizes are what each model's weights take (parameters and buffers). Before a model loads for the
first time its size is unknown, so room is made for it after loading; once it has been loaded, room
is made before, so a switch back never needs the memory of both.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

# Share of a GPU's memory the resident models may take: the rest is for activations, the safety
# checker and the upscaler.
GPU_SHARE = 0.8


def memory_budget(device: torch.device, gigabytes: float | None) -> int:
    """Bytes the resident models may take: the setting, else the GPU's memory (GPU_SHARE of it),
    else half the machine's RAM."""
    if gigabytes is not None:
        return int(gigabytes * 1e9)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * GPU_SHARE)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def weights_bytes(pipe: Any) -> int:
    """Bytes of every torch module of a diffusers pipeline (parameters and buffers)."""
    modules = [value for value in vars(pipe).values() if isinstance(value, torch.nn.Module)]
    tensors = [t for module in modules for t in (*module.parameters(), *module.buffers())]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


class ModelPool(Generic[T]):
    """Loaded models by name, most recently used last. `load(name)` builds one; `size(model)`
    measures it; `unloaded()` runs after models were dropped (to return device memory)."""

    def __init__(
        self, budget: int, load: Callable[[str], T], size: Callable[[T], int], unloaded: Callable[[], None]
    ) -> None:
        self.budget = budget
        self._load, self._size, self._unloaded = load, size, unloaded
        self._models: OrderedDict[str, T] = OrderedDict()
        self._sizes: dict[str, int] = {}  # of every model loaded so far (also after unloading)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    @property
    def resident(self) -> list[str]:
        """Names of the loaded models, least recently used first."""
        return list(self._models)

    def get(self, name: str) -> tuple[T, list[str]]:
        """The model, loaded if need be, and the names of the models unloaded to make room."""
        model = self._models.get(name)
        if model is not None:
            self._models.move_to_end(name)
            return model, []
        unloaded = self._make_room(self._sizes.get(name, 0), keep=None)
        model = self._load(name)
        self._models[name] = model
        self._sizes[name] = self._size(model)
        unloaded += self._make_room(0, keep=name)
        return model, unloaded

    def _make_room(self, needed: int, keep: str | None) -> list[str]:
        dropped = []
        while self._models and sum(self._sizes[name] for name in self._models) + needed > self.budget:
            victim = next(iter(self._models))
            if victim == keep:  # the model in use stays, even alone over the budget
                break
            del self._models[victim]
            dropped.append(victim)
        if dropped:
            self._unloaded()
        return dropped
