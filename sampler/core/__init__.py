"""The pure-JAX core: Kalman filters, priors, the model, the Gibbs sampler, the MCMC kernels, the
batched engine, and the predictive and simulation maths.  Knows no files, no Ray."""
