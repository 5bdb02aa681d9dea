"""App-side helpers for the Streamlit pages: the background worker, caches, state and drawing.

Pages stay thin: they read state from here, call ``exbl_core``, and draw with ``views``.
Nothing in this package reaches into models or tensors beyond what ``exbl_core``'s
public functions return.
"""
