"""flatness: curvature, sharpness and transfer of language models on synthetic languages.

The public curvature API (each a function of a pure ``loss_fn(params)`` or
``loss_fn(params, batch)`` with ``batches=``; see the README, "Curvature and
sharpness"):
"""

from flatness.curvature.fisher import fisher_trace, ggn_trace
from flatness.curvature.hessian import HessianOperator, hvp, paper_selection
from flatness.curvature.sharpness import average_sharpness, worst_case_sharpness
from flatness.curvature.spectrum import SpectralDensity, spectral_density, top_eigenvalues
from flatness.curvature.trace import TraceEstimate, hessian_trace
from flatness.model.enlargement import enlarge

__all__ = [
    "HessianOperator", "SpectralDensity", "TraceEstimate", "average_sharpness", "enlarge",
    "fisher_trace", "ggn_trace", "hessian_trace", "hvp", "paper_selection", "spectral_density",
    "top_eigenvalues", "worst_case_sharpness",
]
