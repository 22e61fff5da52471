"""Diagnostics of recurrent models: gradient flow through time."""
