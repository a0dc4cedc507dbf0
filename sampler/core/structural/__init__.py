"""Structural time-series models: components, their LG-SSM, their Gibbs sampler."""
