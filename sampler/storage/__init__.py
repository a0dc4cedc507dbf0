"""Storage: the config, data files, the Zarr store, orbax checkpoints and the run directory.
Knows files, not Ray; imports only ``sampler.core``."""
