"""eXBL Studio's core: unlearning spurious correlations in chest X-ray classifiers from
one good and one bad GradCAM explanation.

Modules, each depending only on those before it: ``data``, ``synthetic``, ``model``,
``explainers``, ``losses``, ``methods``, ``metrics``, ``training``, ``config``, ``files``
and ``checkpoints``, ``runs``, ``run_data`` and ``run_models``, ``picking``, ``evaluation``,
``figures`` and ``results``, ``pipeline`` and ``cli``.
"""

__version__ = "0.1.0"
