"""Model size presets spanning the paper's range, and parameter counting.

The paper counts parameters with BERT's 30,522-word embedding table and 512
positions (Sec. 4.2 compares models of about 2M to 235M parameters; its HMM
results use a 67M model). With our synthetic vocabularies (a few hundred words)
the embedding table is tiny and the same architectures are much smaller: the
README lists both counts, measured by `param_count_for`. All presets keep a head
dimension of 64, so that `flatness.model.enlargement` can embed any smaller preset in a
larger one by duplicating heads.
"""
import jax

from flatness.model import transformer as model_lib

BERT_VOCAB_SIZE = 30522
BERT_MAX_POSITIONS = 512

# name: (hidden_size, num_layers, num_heads, mlp_dim)
PRESETS = {
    "2m": (64, 4, 1, 256),
    "9m": (256, 2, 4, 1024),
    "41m": (512, 8, 8, 2048),
    "67m": (768, 6, 12, 3072),
    "85m": (768, 8, 12, 3072),
    "235m": (1024, 16, 16, 4096),
}


def preset_fields(name: str) -> dict:
  """The architecture fields of a preset, as `TransformerConfig` keyword arguments."""
  if name not in PRESETS:
    raise ValueError(f"model.preset: unknown preset {name!r}; choose one of "
                     f"{sorted(PRESETS)} or 'custom'")
  hidden, layers, heads, mlp = PRESETS[name]
  return dict(hidden_size=hidden, num_layers=layers, num_heads=heads, mlp_dim=mlp)


def param_count_for(cfg: model_lib.TransformerConfig) -> int:
  """Parameters of the architecture `cfg`, counted without allocating them."""
  shapes = jax.eval_shape(lambda: model_lib.init_params(cfg, jax.random.key(0)))
  return model_lib.param_count(shapes)


def paper_param_count(name: str) -> int:
  """Parameter count of a preset as the paper counts it (BERT vocabulary, 512 positions)."""
  cfg = model_lib.TransformerConfig(vocab_size=BERT_VOCAB_SIZE, seq_len=BERT_MAX_POSITIONS,
                                    **preset_fields(name))
  return param_count_for(cfg)
