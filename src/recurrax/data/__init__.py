"""Text corpora for language modelling."""
