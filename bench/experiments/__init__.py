"""Addon variants for cost attribution (``python -m bench --addon-script ...``), never shipped."""
