"""Choosing by name: one small registry per concept (timm's `register_model` pattern).

A variant is one decorated function in one file:

    LOSSES = Registry("loss scheme")

    @LOSSES.register
    def inverse(counts, recipe):
        "w_c ∝ 1 / n_c (sklearn's 'balanced')"
        ...

Recipe validation, the command lines' `choices` and `--help` read the registry, so nothing else changes when a
variant is added. Registries in the suite (each module's docstring says what a variant receives and returns):
  bench/data/resize.py              resize policies           recipe `resize`, bench.images --policy
  bench/training/schemes.py         loss schemes              recipe `loss`, bench.run --loss, tune space
  bench/ensembling/views.py         test-time-view transforms bench.ensemble --tta
  bench/ensembling/weightings.py    ensemble weightings       bench.ensemble --weights
  bench/ensembling/combiners.py     probability combiners     bench.ensemble --combine
  bench/ensembling/decisions.py     decision rules            bench.ensemble --decision
  bench/tuning/spaces.py            search spaces             bench.tune --space
Backbones have their own registry, zoo/registry.py (`register(name, timm_name, size)`), since a backbone is a row
of data rather than a function.
"""
from __future__ import annotations

import difflib
from typing import Callable, Iterator


class UnknownChoice(ValueError):
    """A name that no variant of the concept is registered under."""


class Registry:
    """Named variants of one concept, in registration order."""

    def __init__(self, concept: str):
        self.concept = concept
        self._items: dict[str, Callable] = {}

    def register(self, fn: Callable | None = None, *, name: str | None = None):
        """Decorator (`@REG.register` or `@REG.register(name="x")`): the function's name is the variant's name, its
        docstring's first line its description in --help."""
        def add(f: Callable) -> Callable:
            key = name or f.__name__
            if key in self._items and self._items[key] is not f:
                raise ValueError(f"{self.concept} {key!r} is registered twice")
            self._items[key] = f
            return f
        return add(fn) if fn is not None else add

    def __getitem__(self, name: str) -> Callable:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._items, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UnknownChoice(f"unknown {self.concept} {name!r}{hint}; choose one of: {', '.join(self._items)}") \
                from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def describe(self) -> str:
        """'name: first docstring line; ...' for --help (argparse needs %% for a literal %)."""
        def first(f):
            return ((f.__doc__ or "").strip().splitlines() or [""])[0].rstrip(".")
        return "; ".join(f"{k}: {first(f)}" if first(f) else k for k, f in self._items.items()).replace("%", "%%")
