"""The experiments' tests share the product tests' tiny trained model and data."""

from tests.conftest import tiny_data, trained_model  # noqa: F401 (fixtures, registered by being imported here)
