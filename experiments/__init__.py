"""One-off experiments behind the research log (docs/results.md): not part of the product.

Each script answers one question about the phantom or the methods and prints what it
measured; the product's benchmarks stay in ``bench/``. Run one with ``python -m experiments.<name>``.
"""
