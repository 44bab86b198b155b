"""Gloss error rate: word error rate over space-separated sign-language glosses.

An `evaluate` module loaded by path (`hftune.metrics.load_metric("gloss_wer")`), so it works offline.
evaluate's import scanner reads one `import` per line: keep imports that way.
"""

import datasets
import evaluate
import jiwer

_DESCRIPTION = """
Gloss WER is the word error rate of a predicted gloss sequence against the reference, where each
space-separated gloss (e.g. `<私> <食べる>`) is one word: (substitutions + deletions + insertions) divided by
the number of reference glosses, summed over the corpus (jiwer). 0 is perfect; it can exceed 1 when the
prediction inserts many glosses. Glosses are compared as they are: no lower-casing or punctuation removal.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): predicted gloss sequences, glosses separated by spaces.
    references (`list` of `str`): reference gloss sequences, glosses separated by spaces.
Returns:
    gloss_wer (`float`): corpus-level word error rate over glosses.
    substitutions, deletions, insertions, hits (`int`): the alignment counts behind it.
Examples:
    >>> metric = hftune.metrics.load_metric("gloss_wer")
    >>> metric.compute(predictions=["<私> <飲む>"], references=["<私> <食べる>"])["gloss_wer"]
    0.5
"""

_CITATION = """
@inproceedings{morris2004,
  author = {Morris, Andrew and Maier, Viktoria and Green, Phil},
  year = {2004},
  month = {01},
  title = {From WER and RIL to MER and WIL: improved evaluation measures for connected speech recognition.}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GlossWer(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://github.com/jitsi/jiwer"],
        )

    def _compute(self, predictions, references) -> dict:
        if not any(reference.split() for reference in references):
            # WER divides by the number of reference glosses: with none it is undefined.
            raise ValueError("gloss_wer needs at least one non-empty reference; all references are empty")
        output = jiwer.process_words(references, predictions)
        return {
            "gloss_wer": float(output.wer),
            "substitutions": output.substitutions,
            "deletions": output.deletions,
            "insertions": output.insertions,
            "hits": output.hits,
        }
