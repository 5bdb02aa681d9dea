"""eXBL Studio's core: unlearning spurious correlations in chest X-ray classifiers from
one good and one bad GradCAM explanation.

Modules, each depending only on those before it: ``data``, ``synthetic``, ``model``,
``gradcam``, ``losses``, ``metrics``, ``training``, ``runs``, ``figures``,
``pipeline`` and ``cli``.
"""

__version__ = "0.1.0"
