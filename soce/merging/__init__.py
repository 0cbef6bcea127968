"""Merge methods (one module each), the streaming engine, the soup writer and in-memory merging."""

from soce.merging._base import MergeContext, MergeMethod, coefficients, count_layers
from soce.merging.engine import StreamingMerge
from soce.merging.recipes import from_mergekit, load_recipe, parse_recipe
from soce.merging.registry import METHODS, build_method, method_class
from soce.merging.soup import Soup, check_recipe, prepare_merge, write_soup

__all__ = [
    "METHODS",
    "MergeContext",
    "MergeMethod",
    "Soup",
    "StreamingMerge",
    "build_method",
    "check_recipe",
    "coefficients",
    "count_layers",
    "from_mergekit",
    "load_recipe",
    "method_class",
    "parse_recipe",
    "prepare_merge",
    "write_soup",
]
