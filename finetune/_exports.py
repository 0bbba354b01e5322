"""Package namespaces whose names load on first use (PEP 562 module `__getattr__`).

`from finetune.data import build_text_datasets` then imports finetune/data/text.py alone: the LM path and the
`finetune` command never pay for diffusers, which finetune/data/sd.py and finetune/models/sd.py import.
Written by hand: the standard library has no helper for a lazy `__all__`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, modules: dict[str, list[str]]) -> tuple[list[str], Callable[[str], Any]]:
    """(`__all__`, `__getattr__`) for `package` from {module: the public names it exports}."""
    where: dict[str, str] = {}
    for module, names in modules.items():
        for name in names:
            if name in where:  # one package name, one meaning: import the others from their module
                raise ValueError(f"{package}: {name} is exported by both {where[name]} and {module}")
            where[name] = f"{package}.{module}"

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    return sorted(where), __getattr__
