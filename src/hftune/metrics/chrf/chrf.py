"""Corpus chrF (sacreBLEU): character n-gram F-score, robust for Japanese glosses.

An `evaluate` module loaded by path (`hftune.metrics.load_metric("chrf")`), so it works offline.
evaluate's import scanner reads one `import` per line: keep imports that way.
"""

import datasets
import evaluate
from sacrebleu.metrics import CHRF

_DESCRIPTION = """
chrF is the F-score of character n-gram precision and recall (Popović, 2015), computed over the corpus by
sacreBLEU. It needs no tokenisation, which suits Japanese and gloss strings. With `word_order=2` it is chrF++.
Whitespace is ignored by default.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): system outputs.
    references (`list` of `str`, or `list` of `list` of `str`): one or several references per prediction.
    char_order (`int`, default 6): character n-gram order.
    word_order (`int`, default 0): word n-gram order (2 gives chrF++).
    beta (`int`, default 2): recall weight.
    lowercase (`bool`, default False).
    whitespace (`bool`, default False): include whitespace in character n-grams.
Returns:
    chrf (`float`): in [0, 100].
    signature (`str`): the sacreBLEU signature.
Examples:
    >>> metric = hftune.metrics.load_metric("chrf")
    >>> round(metric.compute(predictions=["ありがとう"], references=["ありがとう"])["chrf"], 1)
    100.0
"""

_CITATION = """
@inproceedings{popovic-2015-chrf,
    title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
    year = "2015",
    pages = "392--395",
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chrf(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
            ],
            reference_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(
        self,
        predictions,
        references,
        char_order=6,
        word_order=0,
        beta=2,
        lowercase=False,
        whitespace=False,
    ) -> dict:
        references = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
        n_refs = len(references[0])
        if any(len(refs) != n_refs for refs in references):
            raise ValueError("chrf needs the same number of references for every prediction")
        # sacreBLEU wants one stream per reference position, not one list per prediction.
        streams = [[refs[i] for refs in references] for i in range(n_refs)]
        chrf = CHRF(
            char_order=char_order,
            word_order=word_order,
            beta=beta,
            lowercase=lowercase,
            whitespace=whitespace,
        )
        score = chrf.corpus_score(predictions, streams)
        return {"chrf": float(score.score), "signature": str(chrf.get_signature())}
