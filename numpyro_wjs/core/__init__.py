"""Pure JAX steps: Metropolis-Hastings, Langevin (ULA, MALA, BAOAB), walk-jump and the
Gibbs walk-jump moves."""
