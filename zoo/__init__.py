"""Model zoo: registry of backbones, multi-head models, recipes and pretrained-weight loading."""
from zoo.multihead import MultiHeadNet
from zoo.recipes import RECIPES, Recipe, get_recipe
from zoo.registry import ZOO, UnknownModel, count_params, create_model, get_entry, register, zoo_table

__all__ = ["MultiHeadNet", "RECIPES", "Recipe", "get_recipe", "ZOO", "UnknownModel", "count_params",
           "create_model", "get_entry", "register", "zoo_table"]
