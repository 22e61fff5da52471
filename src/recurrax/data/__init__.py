"""Data: text corpora for language modelling and generated sequence tasks."""
