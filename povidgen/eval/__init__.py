"""Hallucination metrics for vision-language models: CHAIR and POPE, with bootstrap intervals.

* :func:`chair` scores captions against the objects present in their images (CHAIR_S,
  CHAIR_I and object recall, Rohrbach et al. 2018), over COCO's categories and synonyms or a
  :class:`Vocabulary` of your own (:data:`SCENE_VOCABULARY` for povidgen's demo scenes).
* :func:`pope_questions` makes POPE's balanced yes/no questions (random, popular or
  adversarial absent objects) and :func:`pope` scores the answers (Li et al. 2023).
* :func:`evaluate_chair` and :func:`evaluate_pope` run any model given as a
  ``generate(images, prompts) -> texts`` callable; :func:`hf_generate` makes one from a local
  Hugging Face VLM folder (greedy decoding).
* :func:`bootstrap_interval` is the percentile bootstrap behind every interval.

``povidgen eval`` runs all of it from the command line (see :mod:`povidgen.eval.command`).
"""

from povidgen.eval.bootstrap import Interval, bootstrap_interval
from povidgen.eval.chair import CaptionChair, ChairResult, chair
from povidgen.eval.evaluate import CHAIR_PROMPT, evaluate_chair, evaluate_pope
from povidgen.eval.generate import Generate, hf_generate
from povidgen.eval.pope import (
    POPE_TEMPLATE,
    PopeQuestion,
    PopeResult,
    Strategy,
    parse_yes_no,
    pope,
    pope_questions,
)
from povidgen.eval.vocabulary import SCENE_VOCABULARY, Vocabulary
from povidgen.eval.words import singularize

__all__ = [
    "CHAIR_PROMPT",
    "POPE_TEMPLATE",
    "SCENE_VOCABULARY",
    "CaptionChair",
    "ChairResult",
    "Generate",
    "Interval",
    "PopeQuestion",
    "PopeResult",
    "Strategy",
    "Vocabulary",
    "bootstrap_interval",
    "chair",
    "evaluate_chair",
    "evaluate_pope",
    "hf_generate",
    "parse_yes_no",
    "pope",
    "pope_questions",
    "singularize",
]
