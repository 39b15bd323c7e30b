r"""The synthetic languages alone (a ``data`` section), for `data_gen.describe`.

Variants: ``pcfg`` (a random grammar of the paper's shape: 49 nonterminals below
the root, 200 words, up to 16 words), ``pcfg_small`` (a grammar a CPU model
learns in minutes), ``hmm`` (the paper's HMM shape), ``teacher`` (random
transformer teacher), ``markov``.

  python -m data_gen.describe --config=experiments/configs/languages.py:pcfg
  python -m data_gen.describe --config=experiments/configs/languages.py:pcfg \
      --grammar_file=PATH/TO/rule_deep_mlm.txt     # the paper's own grammar file
  python -m data_gen.describe --config=experiments/configs/languages.py:hmm
"""
import ml_collections

from data_gen import sections
from data_gen.pcfg.random_grammar import SMALL


def data_config(language: str) -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict(dict(language=language, seed=0))
  d.update(sections.sections())
  if language == "pcfg_small":
    d.language = "pcfg"
    d.pcfg = sections.pcfg_section(SMALL)
  if d.language not in sections.LANGUAGES:
    raise ValueError(f"languages.py: unknown variant {language!r}; choose pcfg, pcfg_small, "
                     "hmm, teacher or markov")
  return d


def get_config(variant: str = "pcfg") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(data=data_config(variant)))
