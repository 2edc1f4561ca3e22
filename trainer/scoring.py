"""Score a generated text against the expected one: ``{"bleu": 0..100, "rouge_l": 0..1}``.

BLEU is sacrebleu's ``sentence_bleu`` (exponential smoothing, its usual 0-100 scale); ROUGE-L is rouge-score's
F-measure of the longest common subsequence (0-1, no stemming). An empty generation scores 0 on both.
"""

from __future__ import annotations

from functools import cache


@cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def score_prediction(generated: str, expected: str) -> dict[str, float]:
    import sacrebleu

    if not generated.strip() or not expected.strip():
        return {"bleu": 0.0, "rouge_l": 0.0}
    bleu = sacrebleu.sentence_bleu(generated, [expected]).score
    rouge_l = _rouge().score(expected, generated)["rougeL"].fmeasure
    return {"bleu": round(min(bleu, 100.0), 4), "rouge_l": round(rouge_l, 4)}
