"""The model and what it is trained on: pure functions of a params pytree.

  transformer   `Transformer` (BERT-style encoder or causal LM), `TransformerConfig`,
                `init_params`, `param_count`
  presets       size presets over the paper's range; `paper_param_count`
  tokens        special tokens and the input layout (`max_words`)
  masking       BERT masking and single-position masking (pure JAX)
  objectives    `Objective`: masked or causal LM loss of params on a batch
  enlargement   function-preserving enlargement into a wider, deeper model
  flops         matmul FLOPs of a training step

Imports: nothing else of flatness.
"""
from flatness.model.objectives import Objective
from flatness.model.transformer import Transformer, TransformerConfig, init_params, param_count

__all__ = ["Objective", "Transformer", "TransformerConfig", "init_params", "param_count"]
