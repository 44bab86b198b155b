"""Corpus BLEU (sacreBLEU) with tokenisation off, for space-separated glosses.

An `evaluate` module loaded by path (`hftune.metrics.load_metric("bleu")`), so it works offline.
evaluate's import scanner reads one `import` per line: keep imports that way.
"""

import datasets
import evaluate
from sacrebleu.metrics import BLEU

_DESCRIPTION = """
Corpus-level BLEU computed by sacreBLEU. Tokenisation is off by default (`tokenize="none"`): the text is
split on spaces only, so each gloss of a sign-language gloss sequence is one token, as recommended for
text-to-gloss evaluation (Müller et al., 2023). Report the returned `signature` with the score.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): system outputs.
    references (`list` of `str`, or `list` of `list` of `str`): one reference per prediction, or several
        (every prediction needs the same number of references).
    tokenize (`str`, default "none"): a sacreBLEU tokenizer name ("none", "13a", "char", "ja-mecab", ...).
    smooth_method (`str`, default "exp"): "none", "floor", "add-k" or "exp".
    lowercase (`bool`, default False): lower-case before scoring.
    max_ngram_order (`int`, default 4).
Returns:
    bleu (`float`): corpus BLEU in [0, 100].
    bleu_1 .. bleu_4 (`float`): n-gram precisions in [0, 100] (up to `max_ngram_order`).
    brevity_penalty (`float`), sys_len (`int`), ref_len (`int`).
    signature (`str`): the sacreBLEU signature, e.g. "nrefs:1|case:mixed|eff:no|tok:none|smooth:exp|version:2.6.0".
Examples:
    >>> metric = hftune.metrics.load_metric("bleu")
    >>> metric.compute(predictions=["<私> <食べる>"], references=["<私> <食べる>"])["bleu"]
    100.00000000000004
"""

_CITATION = """
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    address = "Belgium, Brussels",
    publisher = "Association for Computational Linguistics",
    url = "https://www.aclweb.org/anthology/W18-6319",
    pages = "186--191",
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
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
        tokenize="none",
        smooth_method="exp",
        lowercase=False,
        max_ngram_order=4,
    ) -> dict:
        references = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
        n_refs = len(references[0])
        if any(len(refs) != n_refs for refs in references):
            raise ValueError("bleu needs the same number of references for every prediction")
        # sacreBLEU wants one stream per reference position, not one list per prediction.
        streams = [[refs[i] for refs in references] for i in range(n_refs)]
        bleu = BLEU(
            tokenize=tokenize,
            smooth_method=smooth_method,
            lowercase=lowercase,
            max_ngram_order=max_ngram_order,
        )
        score = bleu.corpus_score(predictions, streams)
        result = {"bleu": float(score.score)}
        result.update({f"bleu_{n}": float(p) for n, p in enumerate(score.precisions, start=1)})
        result.update(
            brevity_penalty=float(score.bp),
            sys_len=int(score.sys_len),
            ref_len=int(score.ref_len),
            signature=str(bleu.get_signature()),
        )
        return result
