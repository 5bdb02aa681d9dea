"""The experiments' tests share the product tests' fixtures: the tiny trained model and data, and the tiny shipped example."""

from tests.conftest import shipped_example, tiny_data, tiny_example, trained_model  # noqa: F401 (fixtures, registered by being imported here)
