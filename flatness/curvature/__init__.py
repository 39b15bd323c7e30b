"""Curvature and sharpness of a loss, each a function of a pure ``loss_fn(params[, batch])``.

  hessian    Hessian-vector products (three orders), probes, parameter selections
  trace      `hessian_trace`: Hutchinson / Hutch++ / XTrace with standard errors
  allocation a trace estimate's variance split between batches and probes; probes per batch
  fisher     traces of the Fisher, the Gauss-Newton and the gradient noise
  spectrum   extreme eigenvalues and the spectral density (Lanczos)
  sharpness  worst-case, adaptive and average-case sharpness
  measure    `Measurer`: the configured metrics of checkpoints on fixed evaluation batches

Imports: `flatness.model`, `flatness.runtime`.
"""
from flatness.curvature.fisher import fisher_trace, ggn_trace, gradient_noise_trace
from flatness.curvature.hessian import HessianOperator, hvp, paper_selection
from flatness.curvature.sharpness import average_sharpness, worst_case_sharpness
from flatness.curvature.spectrum import SpectralDensity, spectral_density, top_eigenvalues
from flatness.curvature.trace import TraceEstimate, hessian_trace

__all__ = [
    "HessianOperator", "SpectralDensity", "TraceEstimate", "average_sharpness", "fisher_trace",
    "ggn_trace", "gradient_noise_trace", "hessian_trace", "hvp", "paper_selection",
    "spectral_density", "top_eigenvalues", "worst_case_sharpness",
]
