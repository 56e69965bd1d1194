"""Kronos model package (public names are re-exported once all modules exist)."""
