"""F1 score, macro-averaged by default; per-class scores with `average=None`.

An `evaluate` module loaded by path (`hftune.metrics.load_metric("f1")`), so it works offline.
evaluate's import scanner reads one `import` per line: keep imports that way.
"""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = """
The F1 score is the harmonic mean of precision and recall: F1 = 2 * (precision * recall) / (precision + recall).
For several classes it is computed per class and then averaged; macro averaging (the default here) weighs
every class equally, so a rare class counts as much as a frequent one.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    labels (`list` of `int`, optional): the classes to score, in this order. Pass every class id to get a
        per-class list that also covers classes absent from this batch.
    average (`str` or None, default "macro"): "macro", "micro", "weighted", "binary", or None for one score
        per class (ordered like `labels`).
    pos_label (`int`, default 1): the positive class when `average="binary"`.
    sample_weight (`list` of `float`, optional): per-example weights.
    zero_division (`float`, default 0.0): the score of a class with no predicted and no true examples.
Returns:
    f1 (`float`, or `list` of `float` when `average=None`): in [0, 1].
Examples:
    >>> metric = hftune.metrics.load_metric("f1")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'f1': 0.6666666666666666}
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], labels=[0, 1, 2], average=None)
    {'f1': [0.6666666666666666, 0.6666666666666666, 0.0]}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O.
          and Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A.
          and Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        labels=None,
        average="macro",
        pos_label=1,
        sample_weight=None,
        zero_division=0.0,
    ) -> dict:
        score = f1_score(
            references,
            predictions,
            labels=labels,
            average=average,
            pos_label=pos_label,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        if average is None:
            return {"f1": [float(value) for value in score]}
        return {"f1": float(score)}
