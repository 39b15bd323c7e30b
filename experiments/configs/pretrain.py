r"""Pre-training a masked (or causal) language model on a synthetic language.

Variants (``--config=experiments/configs/pretrain.py:<variant>``):

  tiny         Markov chain of 8 words, 2-layer 32-wide model: reaches its exact optimal
               loss within 1% in about 20 s on a 2-core CPU.
  markov       a 16-word chain, a 4-layer 128-wide model and more steps.
  pcfg_small   a small random PCFG (32 words, up to 8 words a sentence), a 2-layer model.
  pcfg_compact a smaller one (24 words, up to 8 a sentence), the same model: the language
               of the two-phase CPU experiments, whose optimum the model reaches: within 1%
               after ~75 s with --config.targets=exact --config.train.num_steps=8000
               (benchmarks/convergence.py).
  pcfg         a random PCFG of the paper's shape, the paper's recipe (batch 4096, 25k
               steps, AdamW 5e-4, dropout 0.1) at the 9m preset; pcfg_<preset> for others
               (pcfg_235m is the paper's 235M model). Add
               --config.data.pcfg.grammar_file=PATH for the paper's own grammar.
  hmm, teacher the paper's HMM shape and the random-transformer teacher, same recipe.

Copy-paste commands:

  python -m experiments.pretrain \
      --config=experiments/configs/pretrain.py:tiny --workdir=/tmp/flatness/tiny

  # Any field can be overridden; rerunning with the same workdir resumes.
  python -m experiments.pretrain \
      --config=experiments/configs/pretrain.py:tiny --workdir=/tmp/flatness/tiny \
      --config.train.num_steps=1000 --config.optimizer.name=sgd \
      --config.optimizer.momentum=0.9

  tensorboard --logdir=/tmp/flatness/tiny/tensorboard
"""
import ml_collections

from data_gen import sections
from data_gen.pcfg.random_grammar import COMPACT, COMPACT_SEED, SMALL


def base() -> ml_collections.ConfigDict:
  """Every field, with its default and meaning."""
  c = ml_collections.ConfigDict()
  c.seed = 0                      # model init, masks, dropout and batch order
  c.name = ""                     # run name in analyses ("": the workdir's name)
  c.group = ""                    # recipe shared by runs that differ only in seed ("": name)
  c.experiment = ""               # experiment the run belongs to (set by experiments.run)

  # ---- Data: which language, and how batches are drawn from it.
  c.data = ml_collections.ConfigDict()
  c.data.language = "markov"      # markov | pcfg | hmm | teacher (data_gen.registry)
  c.data.seed = 0                 # seed of the generator itself (grammar, HMM, teacher)
  c.data.source = "stream"        # stream: fresh samples every step (population loss);
                                  # dataset: a fixed TFDS dataset (data_gen.datasets)
  c.data.num_validation = 256     # validation sentences, scored against exact conditionals
  c.data.update(sections.sections())   # markov / pcfg / hmm / teacher knobs (data_gen)
  c.data.dataset = ml_collections.ConfigDict(dict(   # source = "dataset" only
      data_dir="",                  # TFDS data_dir ("": ~/tensorflow_datasets)
      train=100_000, validation=1_000, test=1_000, task_train=10_000, task_test=2_000))

  # ---- Model: a preset of flatness.model.presets, or 'custom' with the fields below.
  c.model = ml_collections.ConfigDict()
  c.model.preset = "custom"       # 2m | 9m | 41m | 67m | 85m | 235m | custom
  c.model.seq_len = 0             # 0: longest sentence + [CLS] + [SEP]
  c.model.hidden_size = 64
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.mlp_dim = 256
  c.model.dropout_rate = 0.0      # the paper uses 0.1
  c.model.attention_dropout_rate = 0.0
  c.model.causal = False          # True: next-token prediction instead of MLM
  c.model.tie_embeddings = True   # output layer = input embedding (BERT)
  c.model.dtype = "float32"       # activations; "bfloat16" on GPU/TPU
  c.model.param_dtype = "float32"

  # ---- BERT masking (flatness.model.masking): 15%, at most 5 predictions, 80/10/10.
  c.masking = ml_collections.ConfigDict(dict(rate=0.15, max_predictions=5, mask_prob=0.8,
                                             random_prob=0.1))
  # What each masked-LM prediction is scored against (flatness.model.objectives):
  #   sampled  the word the generator drew (BERT's loss);
  #   exact    its exact conditional P(x_i | corrupted input, i selected), computed in the
  #            step for the step's own masks (data_gen.bert_targets; pcfg, hmm, markov).
  # Same population loss and minimisers; exact removes the label-sampling gradient noise,
  # whose covariance at the optimum equals the Hessian. MLM only.
  c.targets = "sampled"

  # ---- Optimizer (flatness.training.optimizers). Defaults: the paper's AdamW recipe.
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"      # adamw | adam | sgd | lamb | adafactor | sam
  c.optimizer.learning_rate = 5e-4
  c.optimizer.schedule = "linear"  # after warmup: linear | cosine | constant
  c.optimizer.warmup_steps = 100
  c.optimizer.end_lr_factor = 0.0  # final lr = end_lr_factor * learning_rate
  c.optimizer.weight_decay = 0.01
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  c.optimizer.eps = 1e-6
  c.optimizer.momentum = 0.0      # sgd only; 0 = plain SGD
  c.optimizer.nesterov = False
  c.optimizer.clip_norm = 0.0     # global-norm clipping; 0 = off (the paper: off)
  c.optimizer.sam_rho = 0.05      # sam only: radius of the adversarial step
  c.optimizer.sam_base = "sgd"    # sam only: the outer optimizer

  # ---- The paper's adversarial algorithm (flatness.training.adversarial): minimise the MLM loss
  # minus lam x the validation loss of a closed-form ridge head on the encoder's features.
  c.adversarial = ml_collections.ConfigDict(dict(
      lam=0.0,                    # 0: plain pre-training
      task="A",                   # downstream task whose labels the head fits
      ridge=1e-3,                 # kernel ridge regulariser
      fit_fraction=0.875,         # share of each batch that fits the head; the rest validates
      features="concat"))         # what the head reads: concat, the linear probe's features
                                  # (default); cls, the authors' pooled [CLS] (gets no MLM
                                  # gradient here, so attacking it leaves the probe's input alone)

  # ---- Phase 2 of a two-phase run: start from the params of another run's checkpoint
  # (e.g. one trained to the optimum) instead of a fresh init. The optimizer state, step
  # counter and schedule start fresh; the data stream continues where that run stopped.
  c.init = ml_collections.ConfigDict(dict(
      workdir="",                 # "": a fresh init
      step=-1))                   # its checkpoint to start from (-1: the latest)

  # ---- Training loop.
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64         # global, over all devices and processes
  c.train.num_steps = 1000
  c.train.grad_accum_steps = 1    # micro-batches per step
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.eval_batch_size = 64    # sentences per evaluation batch
  c.train.checkpoint_every = 250
  c.train.max_to_keep = 2         # latest checkpoints kept
  c.train.keep_every = 0          # also keep every K-th step for ever (0: none)
  c.train.prefetch = 2            # host batches prepared ahead in a thread
  # CPU speed (benchmarks/train_throughput.py). Both change the float32 rounding of the
  # trajectory (not the math), so the README's measured runs keep them off:
  c.train.steps_per_call = 1      # K > 1: up to K steps per jitted call (a lax.scan, the
                                  # step's key folded inside; calls end on log, eval and
                                  # checkpoint steps; SIGTERM honoured at the call's end)
  c.train.fast_kernels = False    # the training step's kernels (TransformerConfig.fast_grad,
                                  # .last_block_at_positions; train_step.trim_predictions)
  return c


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
  c = base()
  if variant == "tiny":
    c.data.markov.update(num_words=8, length=6, concentration=0.5)
    c.model.hidden_size, c.model.mlp_dim = 32, 64
    c.optimizer.update(learning_rate=1e-2, schedule="cosine", warmup_steps=30, weight_decay=0.0)
    c.train.update(batch_size=128, num_steps=1000, eval_every=500, checkpoint_every=500)
    c.data.num_validation = 512
  elif variant in ("pcfg_small", "pcfg_compact"):
    c.data.language = "pcfg"
    if variant == "pcfg_small":
      c.data.pcfg = sections.pcfg_section(SMALL)
    else:
      c.data.pcfg, c.data.seed = sections.pcfg_section(COMPACT), COMPACT_SEED
    c.model.update(hidden_size=64, num_layers=2, num_heads=2, mlp_dim=256)
    c.optimizer.update(learning_rate=3e-3, schedule="cosine", warmup_steps=100, weight_decay=0.0)
    c.train.update(batch_size=128, num_steps=3000, eval_every=500, checkpoint_every=500)
  elif variant.startswith("pcfg_") or variant in ("pcfg", "hmm", "teacher"):
    # The paper's languages at a model preset: pcfg (random grammar of the paper's shape),
    # pcfg_<preset>, hmm, teacher. Give --config.data.pcfg.grammar_file=... for the
    # paper's own grammar.
    c.data.language = "pcfg" if variant.startswith("pcfg") else variant
    c.model.preset = variant.split("_")[1] if "_" in variant else "9m"
    c.model.seq_len = 32
    c.model.update(dropout_rate=0.1, attention_dropout_rate=0.1)
    c.optimizer.update(learning_rate=5e-4, warmup_steps=3333, weight_decay=0.01)
    c.train.update(batch_size=4096, num_steps=25_000, eval_every=1000, checkpoint_every=1000,
                   log_every=100)
  elif variant == "markov":
    c.model.hidden_size, c.model.num_layers, c.model.num_heads, c.model.mlp_dim = 128, 4, 2, 512
    c.optimizer.learning_rate = 1e-3
    c.train.batch_size = 128
    c.train.num_steps = 3000
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
  else:
    raise ValueError(f"pretrain.py: unknown variant {variant!r}; choose tiny, markov, "
                     "pcfg_small, pcfg_compact, pcfg, pcfg_<preset>, hmm or teacher")
  return c
