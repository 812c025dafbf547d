"""Model zoo: registry of backbones, multi-head models, recipes and pretrained-weight loading.

Recipes are importable without torch (command lines build their --help from them); the registry and models load
torch and timm on first use.
"""
from zoo.recipes import RECIPES, Recipe, get_recipe

_LAZY = {"MultiHeadNet": "zoo.multihead", "ZOO": "zoo.registry", "UnknownModel": "zoo.registry",
         "count_params": "zoo.registry", "create_model": "zoo.registry", "get_entry": "zoo.registry",
         "register": "zoo.registry", "zoo_table": "zoo.registry"}

__all__ = ["RECIPES", "Recipe", "get_recipe", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
