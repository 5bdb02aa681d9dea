"""The refinement methods' names, apart from the registry that implements them.

The run folder must know which ``refined-<method>.pt`` files are its own: a run never
replaces or deletes a file the tool did not write, and a user's ``refined-mine.pt`` is
not one. It reads these names instead of importing ``exbl_core.methods``, which brings
the models, the explainers and the training code with it. The registry checks at import
that it holds exactly these names, in this order.
"""

NAMES = (
    "exbl",
    "exbl-cam",
    "rrr-lungs",
    "gradcam-lungs",
    "counterexamples",
    "counterexamples-cam",
    "region-swap",
    "region-swap-occlusion",
)
