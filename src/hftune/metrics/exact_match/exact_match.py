"""Exact match: the share of predictions identical to their reference.

An `evaluate` module loaded by path (`hftune.metrics.load_metric("exact_match")`), so it works offline.
evaluate's import scanner reads one `import` per line: keep imports that way.
"""

import datasets
import evaluate

_DESCRIPTION = """
Exact match is the proportion of predictions that equal their reference string. By default runs of
whitespace are collapsed and the ends stripped first, so `<私>  <食べる> ` matches `<私> <食べる>`; nothing
else is normalised (case and punctuation count). It ranges from 0 to 1.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): predicted strings.
    references (`list` of `str`): reference strings.
    normalize_whitespace (`bool`, default True): collapse whitespace runs and strip both ends before comparing.
Returns:
    exact_match (`float`): in [0, 1].
Examples:
    >>> metric = hftune.metrics.load_metric("exact_match")
    >>> metric.compute(predictions=["<私> <食べる>", "<行く>"], references=["<私>  <食べる>", "<行く> <ない>"])
    {'exact_match': 0.5}
"""

_CITATION = """
@inproceedings{rajpurkar2016squad,
  title={{SQuAD}: 100,000+ Questions for Machine Comprehension of Text},
  author={Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle={Proceedings of EMNLP},
  pages={2383--2392},
  year={2016}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://huggingface.co/spaces/evaluate-metric/exact_match"],
        )

    def _compute(self, predictions, references, normalize_whitespace=True) -> dict:
        if normalize_whitespace:
            predictions = [" ".join(text.split()) for text in predictions]
            references = [" ".join(text.split()) for text in references]
        matches = sum(
            prediction == reference for prediction, reference in zip(predictions, references, strict=True)
        )
        return {"exact_match": matches / len(references) if references else 0.0}
