"""Language modelling: vocabularies, tokenisation and n-gram baselines."""
