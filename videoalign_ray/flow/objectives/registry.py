"""Objective name -> the module that defines it, and how it trains. Adding an objective is one line here plus
its module (and, for an online objective, its job).

``offline``: trained from a preference table by the Flow-DPO job (``--objective``); ``online``: trained on
the policy's own samples by an online job. Modules are imported on first use: the registry imports nothing
heavy (config classes read the names without loading torch) and no objective imports another's registration.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from videoalign_ray.flow.objectives.base import Objective

_REGISTRY: dict[str, tuple[str, Literal["offline", "online"]]] = {
    "dpo": ("videoalign_ray.flow.objectives.dpo", "offline"),
    "rwr": ("videoalign_ray.flow.objectives.rwr", "offline"),
    "sft": ("videoalign_ray.flow.objectives.sft", "offline"),
    "pretrain": ("videoalign_ray.flow.objectives.sft", "offline"),
    "grpo": ("videoalign_ray.flow.objectives.grpo", "online"),
}


def objective_names(kind: Literal["offline", "online"] | None = None) -> tuple[str, ...]:
    """Registered names, all or those of one ``kind``."""
    return tuple(n for n, (_, k) in _REGISTRY.items() if kind is None or k == kind)


def get_objective(name: str) -> Objective:
    """The registered objective ``name``.

    Raises:
        ValueError: no objective of that name (the message lists the registered ones).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective {name!r}; registered: {', '.join(_REGISTRY)}")
    return importlib.import_module(_REGISTRY[name][0]).OBJECTIVES[name]
