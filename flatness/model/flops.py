"""Matmul FLOPs of a training step, for throughput and model-FLOPs utilisation.

For a sequence of ``S`` positions through ``L`` layers of width ``H`` and MLP
width ``F``, with the output head applied at ``P`` positions over ``V`` words
(MLM: the masked positions; causal: all ``S``), counting 2 FLOPs per
multiply-add and only matrix products (layer norms, softmax, GELU are a few
percent at these sizes):

  forward = 2 * [ L * (4 S H^2          # Q, K, V and output projections
                       + 2 S^2 H        # attention scores and weighted values
                       + 2 S H F)       # the MLP
                  + P * (H^2 + H V) ]   # MLM transform and output projection
  training step = 3 * forward           # backward costs twice the forward

With ``TransformerConfig.last_block_at_positions`` (MLM) the last layer computes its
keys and values at all ``S`` positions and the rest at the ``P`` predicted ones:
``2 S H^2 + 2 P H^2 + 2 P S H + 2 P H F``.

MFU = (training FLOPs per second) / (the accelerator's peak dense FLOP/s).
"""
from flatness.model.transformer import TransformerConfig

# Peak dense matmul FLOP/s by `jax.devices()[0].device_kind` (bf16 unless noted).
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def forward_flops(cfg: TransformerConfig, predictions: int) -> float:
  """Matmul FLOPs of one sequence's forward pass, the head at ``predictions`` positions."""
  s, h, f, layers, v = cfg.seq_len, cfg.hidden_size, cfg.mlp_dim, cfg.num_layers, cfg.vocab_size
  per_layer = 4 * s * h * h + 2 * s * s * h + 2 * s * h * f
  total = layers * per_layer + predictions * (h * h + h * v)
  if cfg.last_block_at_positions and not cfg.causal:
    p = predictions
    total += (2 * s * h * h + 2 * p * h * h + 2 * p * s * h + 2 * p * h * f) - per_layer
  return 2.0 * total


def train_step_flops(cfg: TransformerConfig, batch_size: int, predictions: int) -> float:
  """FLOPs of one optimizer step on ``batch_size`` sequences (see module docstring)."""
  return 3.0 * batch_size * forward_flops(cfg, cfg.seq_len if cfg.causal else predictions)


def peak_flops(device_kind: str) -> float | None:
  for name, peak in PEAK_FLOPS.items():
    if device_kind.startswith(name):
      return peak
  return None
