"""NumPyro ``MCMCKernel``s around the pure steps of ``numpyro_wjs.core``."""
