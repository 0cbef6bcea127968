"""SoCE: Soup of Category Experts and the model-soup family, as a service."""

__version__ = "0.1.0"
