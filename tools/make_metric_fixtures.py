#!/usr/bin/env python3
"""Reference fixtures for the report metrics in echovlm-pipeline/src/metrics.

Regenerate (from the repository root, after tools/setup.sh made tools/.venv):

    tools/.venv/bin/python tools/make_metric_fixtures.py

Pinned reference versions (also in tools/requirements.txt); the script refuses
to run with others so that the fixtures stay reproducible:

    sacrebleu==2.6.0    BLEU and its tokenizers `13a` and `zh`
    rouge-score==0.1.2  ROUGE-1/2/L (rouge_scorer.RougeScorer)
    jieba==0.42.1       optional Chinese word segmentation (HMM on, default dictionary)

Writes, deterministically (no randomness, no network, sorted output):

    fixtures/metrics/pairs.jsonl    reference/hypothesis pairs, English and Chinese
    fixtures/metrics/expected.json  what sacrebleu and rouge-score compute on them

Scale: BLEU numbers are sacrebleu's (0-100). ROUGE numbers are rouge-score's
(0-1) as returned; the Rust side reports ROUGE on 0-100 and the test scales.
"""

import json
import logging
import math
import os
import sys
from importlib.metadata import version

PINNED = {"sacrebleu": "2.6.0", "rouge-score": "0.1.2", "jieba": "0.42.1"}
for _name, _want in PINNED.items():
    _have = version(_name)
    if _have != _want:
        sys.exit(f"{_name}=={_have} installed, the fixtures are made with {_name}=={_want}")

import jieba  # noqa: E402
from rouge_score import rouge_scorer, tokenizers  # noqa: E402
from sacrebleu.metrics import BLEU  # noqa: E402
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a  # noqa: E402
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh  # noqa: E402

jieba.setLogLevel(logging.WARNING)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "metrics")

# (reference, hypothesis). Ultrasound-report-like text with varied overlap.
EN_PAIRS = [
    # identical
    ("The thyroid gland is normal in size and echotexture. No focal nodule is seen.",
     "The thyroid gland is normal in size and echotexture. No focal nodule is seen."),
    # empty hypothesis
    ("Liver is normal in size with homogeneous echotexture.", ""),
    # no overlap at all
    ("Gallbladder wall is thickened", "unremarkable spleen"),
    # decimals and a multiplication sign written as x
    ("A hypoechoic nodule measuring 1.2 x 0.8 cm is seen in the right lobe.",
     "Hypoechoic nodule measuring 1.2 x 0.9 cm in the right lobe."),
    # hyphenated words, commas
    ("Well-defined, oval, hypoechoic mass with no internal vascularity on color Doppler.",
     "Ill-defined hypoechoic mass with internal vascularity on colour Doppler."),
    # scoring system names, parentheses, semicolon, digit-dash ranges
    ("TI-RADS 4 (moderately suspicious); fine-needle aspiration is recommended.",
     "TI-RADS 3, mildly suspicious. Follow-up ultrasound in 1-2 years is recommended."),
    # much shorter than the reference (brevity penalty)
    ("Both kidneys are normal in size and position with preserved corticomedullary "
     "differentiation. No hydronephrosis or calculi.",
     "Normal kidneys."),
    # longer than the reference
    ("No free fluid in the pelvis.",
     "No free fluid is seen in the pelvis or in Morrison's pouch; the bladder is "
     "well distended and the uterus is anteverted."),
    # HTML entities that the 13a tokenizer unescapes, ampersand
    ('Impression: "benign-appearing" cyst in the left & right ovaries.',
     "Impression: &quot;benign-appearing&quot; cysts in the left &amp; right ovaries."),
    # millimetres glued to numbers, BI-RADS, abbreviations with periods
    ("BI-RADS 2. Simple cyst, approx. 12-15 mm, at 10 o'clock, e.g. benign.",
     "BI-RADS 2: simple cyst approx. 13mm at 10 o'clock."),
    # case differences (BLEU is case sensitive, rouge-score lowercases)
    ("NO EVIDENCE OF DEEP VEIN THROMBOSIS IN THE LEFT LOWER LIMB.",
     "No evidence of deep vein thrombosis in the left lower limb."),
    # a newline and a hyphen at a line break
    ("The common bile duct measures 4 mm.\nNo intrahepatic duct dilatation.",
     "Common bile duct is 4 mm, no intra-\nhepatic duct dilatation."),
    # non-ASCII symbols: multiplication sign, en dash, less-or-equal, degree, curly quotes
    ("Lymph node 5 \u00d7 4 mm, fatty hilum preserved; cortex \u2264 3 mm.",
     "Lymph node 5 \u00d7 4 mm with \u201cpreserved\u201d fatty hilum, cortex 2\u20133 mm at 37 \u00b0C."),
    # single-word hypothesis (sentence BLEU needs the effective order)
    ("Normal study.", "Normal"),
    # repeated words (clipped counts)
    ("The spleen is normal.", "the the the the spleen spleen is is normal normal."),
    # leading and trailing whitespace, tabs
    ("  Portal vein is patent with hepatopetal flow.  ",
     "\tPortal vein patent, hepatopetal flow.\t "),
    # thousands separator, a sentence ending in a number
    ("Post-void residual volume is 1,200 ml. Prostate volume measures 35.5.",
     "Post void residual is 1,200 ml; prostate volume 35.5 ml."),
    # slashes, colons, parentheses
    ("Impression: right/left carotid plaque (arrow) without significant stenosis.",
     "Impression: bilateral carotid plaques (arrows), no significant stenosis."),
    # same words, different punctuation
    ("Fetal heart rate 142 bpm, regular rhythm.", "Fetal heart rate 142 bpm; regular rhythm!"),
    # realistic partial overlap
    ("Mild hepatomegaly with diffusely increased echogenicity, consistent with "
     "fatty infiltration. Gallbladder, pancreas and spleen are unremarkable.",
     "The liver is enlarged with increased echogenicity suggestive of fatty liver. "
     "The gallbladder and spleen are normal."),
]

ZH_PAIRS = [
    # identical
    ("甲状腺大小正常，实质回声均匀，未见明显占位性病变。",
     "甲状腺大小正常，实质回声均匀，未见明显占位性病变。"),
    # empty hypothesis
    ("肝脏大小正常，包膜光滑，实质回声均匀。", ""),
    # no overlap (no shared character)
    ("肝脏大小形态正常", "胆囊壁增厚毛糙"),
    # mixed with English, numbers, TI-RADS
    ("甲状腺右叶见一低回声结节，大小约1.2 x 0.8 cm，边界清，形态规则，TI-RADS 4a类。",
     "甲状腺右叶可见低回声结节，大小约1.2×0.9cm，边界欠清，TI-RADS 4b类。"),
    # full-width colon, Latin abbreviation
    ("CDFI：结节内可见点状血流信号。", "CDFI：结节周边可见少许血流信号。"),
    # much shorter than the reference (brevity penalty)
    ("双肾大小形态正常，皮髓质分界清晰，集合系统未见分离，未见明显结石声影。", "双肾未见异常。"),
    # longer than the reference
    ("盆腔未见积液。",
     "盆腔未见明显游离积液，子宫前位，大小形态正常，双侧附件区未见明显异常回声。"),
    # BI-RADS, clock position, full-width parentheses and semicolon
    ("左乳10点钟方向见一无回声区（大小约8×6mm）；BI-RADS 2类。",
     "左乳10点方向可见囊性无回声区（约9×6mm），BI-RADS 3类。"),
    # enumeration comma and em dash, ellipsis, degree sign in the quirky zh ranges
    ("肝、胆、胰、脾未见异常——建议3～6个月复查……",
     "肝、胆、脾未见明显异常，建议6个月后复查。"),
    # half-width punctuation inside Chinese text
    ("胆总管内径约0.5cm,肝内胆管未见扩张.", "胆总管内径约0.6cm，肝内胆管无扩张。"),
    # a newline inside the text
    ("子宫前位，大小约5.2×4.6×3.9cm。\n肌层回声均匀，内膜厚约0.8cm。",
     "子宫前位，大小约5.0×4.5×4.0cm，肌层回声均匀，内膜厚约1.0cm。"),
    # repeated characters (clipped counts)
    ("脾脏大小正常。", "脾脏脾脏脾脏大小正常正常。"),
    # case differences in Latin letters
    ("血HCG阳性，宫内见孕囊。", "血hcg阳性，宫内可见孕囊及卵黄囊。"),
    # many numbers with decimals, plus sign
    ("胎儿双顶径约8.6cm，头围约31.2cm，股骨长约6.8cm，估计孕周约34周+3天。",
     "胎儿双顶径8.5cm，头围31.0cm，股骨长6.8cm，孕周约34周。"),
    # parentheses with abbreviation, multiplication sign
    ("双侧颈动脉内中膜增厚（IMT约1.1mm），左侧颈总动脉分叉处可见大小约12×3mm的混合回声斑块。",
     "颈动脉内中膜增厚，左侧颈总动脉分叉处见混合回声斑块，大小约11×3mm。"),
    # percent sign, English terms
    ("心脏各房室腔内径在正常范围，室壁运动协调，EF 65%。", "各房室内径正常，室壁运动协调，EF约62%。"),
    # leading and trailing whitespace, ideographic space
    ("  门静脉主干内径约1.1cm，血流通畅。 ", "\u3000门静脉内径1.1cm，血流通畅。\u3000"),
    # single-character hypothesis
    ("无异常。", "无"),
    # hyphenated range, digits next to a dash
    ("双侧颈部可见多发淋巴结，最大约15-20mm，皮髓质分界清。", "颈部多发淋巴结，大者约18mm，结构清楚。"),
    # realistic partial overlap
    ("脂肪肝（中度），胆囊结石，胆囊壁毛糙；胰腺、脾脏及双肾未见明显异常。",
     "中度脂肪肝，胆囊多发结石伴胆囊炎，胰、脾、双肾未见异常。"),
]

# Extra strings that exercise corners of the sacrebleu tokenizers.
TOKENIZER_PROBES = [
    "",
    "   ",
    "Hello, world.",
    "a..b",
    "e.g., i.e.; U.S.A.",
    "1.2 x 0.8 cm",
    "3.5. Next",
    ".5 and 5.",
    "1,200,000 and a,b ,c",
    "3-4 cm, well-defined, -5, a-1, 1-a, 10--20",
    "&quot;quoted&quot; &amp;amp; &lt;tag&gt; &apos; &#39;",
    "before<skipped>after",
    "line one-\nline two\nline three",
    "tabs\tand\rcarriage\x0breturns\x0cform",
    "sep\x1cfile\x1dgroup\x1erecord\x1funit",
    "nbsp\u00a0here and\u2003em space",
    "{braces} [brackets] `tick` ~tilde^ |pipe| \\back/slash",
    "!\"#$%&()*+:;<=>?@_'",
    "\u201ccurly\u201d \u2018single\u2019 \u2026 \u2014 \u2013 \u2103 \u2264 \u2192 \u2460",
    "\u00d7 \u00b0 \u00b5m \u00e9cho na\u00efve",
    "甲状腺右叶见一低回声结节，大小约1.2 x 0.8 cm，TI-RADS 4a类。",
    "中文,英文.混合:符号;测试!问号?",
    "（括号）【方括号】《书名号》「引号」",
    "全角ＡＢＣ１２３",
    "\u3000ideographic\u3000space\u3000",
    "ext-B \U00020000 and \U0002a6d6 and \U0002f800",
    "newer CJK \u9fbc\u9fcc\u9fff and \u4db6 and \u2a6e",
    "kana \u3042\u30a2 hangul \ud55c\uae00 halfwidth \uff71",
    "emoji \U0001f600 and \u2600\u2764",
    "trailing dot.",
    "1.\n2.",
]

# A second reference for a few hypotheses (multi-reference BLEU).
MULTI_REF = [
    # (hypothesis, [reference 1, reference 2])
    ("Hypoechoic nodule measuring 1.2 x 0.9 cm in the right lobe.",
     ["A hypoechoic nodule measuring 1.2 x 0.8 cm is seen in the right lobe.",
      "Right lobe hypoechoic nodule, 1.2 x 0.9 cm."]),
    ("Normal kidneys.",
     ["Both kidneys are normal in size and position.", "Kidneys normal."]),
    ("No free fluid is seen in the pelvis or in Morrison's pouch.",
     ["No free fluid in the pelvis.", "No free fluid is seen in the pelvis or abdomen."]),
    ("Fetal heart rate 142 bpm; regular rhythm!",
     ["Fetal heart rate 142 bpm, regular rhythm.", "Regular fetal heart rhythm at 142 bpm."]),
    ("", ["Liver is normal.", "Normal liver."]),
]

# Extra strings for jieba: Latin runs with connectors, dictionary words with
# Latin letters, full-width text, whitespace.
JIEBA_PROBES = [
    "乳腺BI-RADS4a类，TI-RADS 3类",
    "版本v1_2与1.2.3号，a.5和x--y，50%以上",
    "B超提示T恤C++与AT&T无关",
    "胎儿双顶径约8.6cm\r\n股骨长约6.8cm\t羊水指数12.5",
    "ＣＤＦＩ：血流信号丰富（Ⅲ级）",
    "右肾上极见一大小约1.5×1.2cm的强回声光团，后伴声影。",
]

zh_tok = TokenizerZh()
en_tok = Tokenizer13a()


class CharTokenizer(tokenizers.Tokenizer):
    """One token per non-whitespace character (the Chinese ROUGE default)."""

    def tokenize(self, text):
        return [c for c in text if not c.isspace()]


class JiebaTokenizer(tokenizers.Tokenizer):
    """jieba words, whitespace-only words dropped."""

    def tokenize(self, text):
        return [w for w in jieba.cut(text, HMM=True) if w.strip()]


def jieba_join(text):
    return " ".join(JiebaTokenizer().tokenize(text))


ROUGE_TYPES = ["rouge1", "rouge2", "rougeL"]
SCORERS = {
    "en": rouge_scorer.RougeScorer(ROUGE_TYPES),  # default tokenizer, no stemming
    "zh": rouge_scorer.RougeScorer(ROUGE_TYPES, tokenizer=CharTokenizer()),
}
DEFAULT_TOKENIZER = tokenizers.DefaultTokenizer(use_stemmer=False)
JIEBA_SCORER = rouge_scorer.RougeScorer(ROUGE_TYPES, tokenizer=JiebaTokenizer())

SMOOTHINGS = [("exp", None), ("none", None), ("floor", 0.1), ("add-k", 1)]
TOKENIZE = {"en": "13a", "zh": "zh"}


def smooth_key(method, value):
    return method if value is None else f"{method}:{value}"


def bleu_json(s):
    for v in [s.score, s.bp, *s.precisions]:
        assert math.isfinite(v)
    return {
        "score": s.score,
        "precisions": list(s.precisions),
        "bp": s.bp,
        "sys_len": s.sys_len,
        "ref_len": s.ref_len,
    }


def rouge_json(scores):
    return {
        k: {"precision": v.precision, "recall": v.recall, "f1": v.fmeasure}
        for k, v in sorted(scores.items())
    }


def mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def corpus_bleu_all(hyps, refs, tokenize):
    """BLEU-1..4 for every smoothing, corpus level (no effective order)."""
    out = {}
    for method, value in SMOOTHINGS:
        per_n = {}
        for n in range(1, 5):
            metric = BLEU(tokenize=tokenize, smooth_method=method, smooth_value=value,
                          max_ngram_order=n)
            per_n[str(n)] = bleu_json(metric.corpus_score(hyps, [refs]))
        out[smooth_key(method, value)] = per_n
    return out


def report(bleu_exp, rouge_rows):
    return {
        "bleu1": bleu_exp["1"]["score"],
        "bleu2": bleu_exp["2"]["score"],
        "bleu3": bleu_exp["3"]["score"],
        "bleu4": bleu_exp["4"]["score"],
        "rouge1": mean([r["rouge1"]["f1"] for r in rouge_rows]),
        "rouge2": mean([r["rouge2"]["f1"] for r in rouge_rows]),
        "rougeL": mean([r["rougeL"]["f1"] for r in rouge_rows]),
        "samples": len(rouge_rows),
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    pairs = []
    for lang, rows in (("en", EN_PAIRS), ("zh", ZH_PAIRS)):
        for i, (ref, hyp) in enumerate(rows, 1):
            pairs.append({"id": f"{lang}-{i:02d}", "lang": lang, "reference": ref,
                          "hypothesis": hyp})

    with open(os.path.join(OUT, "pairs.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")

    per_pair = []
    for p in pairs:
        lang, ref, hyp = p["lang"], p["reference"], p["hypothesis"]
        tok = TOKENIZE[lang]
        pre = BLEU(tokenize=tok)._preprocess_segment  # rstrip + tokenizer, as BLEU does
        entry = {
            "id": p["id"],
            "bleu_tokens": {"reference": pre(ref), "hypothesis": pre(hyp)},
            # token lists joined with single spaces (no token contains a space)
            "rouge_tokens": {
                "reference": " ".join(SCORERS[lang]._tokenizer.tokenize(ref)),
                "hypothesis": " ".join(SCORERS[lang]._tokenizer.tokenize(hyp)),
            },
            "sentence_bleu": {},
            "rouge": rouge_json(SCORERS[lang].score(ref, hyp)),
        }
        # sacrebleu.sentence_bleu: effective order on. Scores of BLEU-1..4 with
        # 'exp', of BLEU-4 with the other smoothings, and the full BLEU-4 'exp'
        # statistics (keeps the fixture small).
        for method, value in SMOOTHINGS:
            orders = range(1, 5) if method == "exp" else [4]
            scores = []
            for n in orders:
                metric = BLEU(tokenize=tok, smooth_method=method, smooth_value=value,
                              max_ngram_order=n, effective_order=True)
                result = metric.sentence_score(hyp, [ref])
                scores.append(bleu_json(result)["score"])
                if method == "exp" and n == 4:
                    entry["sentence_bleu4_exp"] = bleu_json(result)
            entry["sentence_bleu"][smooth_key(method, value)] = scores
        if lang == "zh":
            # rouge-score's own tokenizer keeps only [a-z0-9] runs: Chinese vanishes.
            entry["rouge_default_tokenizer"] = {
                "reference_tokens": " ".join(DEFAULT_TOKENIZER.tokenize(ref)),
                "hypothesis_tokens": " ".join(DEFAULT_TOKENIZER.tokenize(hyp)),
                "scores": rouge_json(rouge_scorer.RougeScorer(ROUGE_TYPES).score(ref, hyp)),
            }
        per_pair.append(entry)

    corpus = {}
    for lang in ("en", "zh"):
        idx = [i for i, p in enumerate(pairs) if p["lang"] == lang]
        hyps = [pairs[i]["hypothesis"] for i in idx]
        refs = [pairs[i]["reference"] for i in idx]
        bleu = corpus_bleu_all(hyps, refs, TOKENIZE[lang])
        rows = [per_pair[i]["rouge"] for i in idx]
        corpus[lang] = {
            "bleu": bleu,
            "rouge_mean": {k: {m: mean([r[k][m] for r in rows])
                               for m in ("precision", "recall", "f1")} for k in ROUGE_TYPES},
            "report": report(bleu["exp"], rows),
        }

    # Overall: every pair tokenized with its own language's tokenizer, then one
    # corpus BLEU over the pre-tokenized text (sacrebleu's `none` tokenizer).
    pre_hyps = [e["bleu_tokens"]["hypothesis"] for e in per_pair]
    pre_refs = [e["bleu_tokens"]["reference"] for e in per_pair]
    overall_bleu = {}
    for n in range(1, 5):
        metric = BLEU(tokenize="none", max_ngram_order=n)
        overall_bleu[str(n)] = bleu_json(metric.corpus_score(pre_hyps, [pre_refs]))
    corpus["overall"] = {"report": report(overall_bleu, [e["rouge"] for e in per_pair])}

    # Optional jieba word segmentation for Chinese (BLEU and ROUGE).
    zh = [p for p in pairs if p["lang"] == "zh"]
    jieba_pairs = []
    for p in zh:
        jieba_pairs.append({
            "id": p["id"],
            "reference_words": jieba_join(p["reference"]),
            "hypothesis_words": jieba_join(p["hypothesis"]),
            "rouge": rouge_json(JIEBA_SCORER.score(p["reference"], p["hypothesis"])),
        })
    j_hyps = [jieba_join(p["hypothesis"]) for p in zh]
    j_refs = [jieba_join(p["reference"]) for p in zh]
    jieba_bleu = {}
    for n in range(1, 5):
        metric = BLEU(tokenize="none", max_ngram_order=n)
        jieba_bleu[str(n)] = bleu_json(metric.corpus_score(j_hyps, [j_refs]))
    jieba_probes = [{"input": t, "words": jieba_join(t)} for t in JIEBA_PROBES]
    jieba_out = {
        "probes": jieba_probes,
        "pairs": jieba_pairs,
        "corpus_bleu_exp": jieba_bleu,
        "report": report(jieba_bleu, [p["rouge"] for p in jieba_pairs]),
    }

    # Multi-reference BLEU (English, `13a`): corpus BLEU-1..4 ('exp') and
    # sentence BLEU-4 per hypothesis.
    m_hyps = [h for h, _ in MULTI_REF]
    m_streams = [[refs[k] for _, refs in MULTI_REF] for k in range(2)]
    multi = {"hypotheses": m_hyps, "references": [refs for _, refs in MULTI_REF],
             "corpus_bleu_exp": {}, "sentence_bleu4_exp": []}
    for n in range(1, 5):
        metric = BLEU(tokenize="13a", max_ngram_order=n)
        multi["corpus_bleu_exp"][str(n)] = bleu_json(metric.corpus_score(m_hyps, m_streams))
    for h, refs in MULTI_REF:
        metric = BLEU(tokenize="13a", effective_order=True)
        multi["sentence_bleu4_exp"].append(bleu_json(metric.sentence_score(h, refs)))

    # The code points sacrebleu's TokenizerZh treats as Chinese, as closed ranges.
    ranges, start = [], None
    for cp in range(0x110000):
        ok = not (0xD800 <= cp <= 0xDFFF) and TokenizerZh._is_chinese_char(chr(cp))
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            ranges.append([start, cp - 1])
            start = None
    if start is not None:
        ranges.append([start, 0x10FFFF])

    probes = [{"input": s, "13a": en_tok(s), "zh": zh_tok(s),
               "13a_lowercase": BLEU(tokenize="13a", lowercase=True)._preprocess_segment(s),
               "rouge_default": " ".join(DEFAULT_TOKENIZER.tokenize(s))}
              for s in TOKENIZER_PROBES]

    expected = {
        "generator": "tools/make_metric_fixtures.py",
        "versions": PINNED,
        "scales": {"bleu": "0-100 (sacrebleu)", "rouge": "0-1 (rouge-score)"},
        "zh_chinese_char_ranges": ranges,
        "tokenizer_probes": probes,
        "pairs": per_pair,
        "corpus": corpus,
        "jieba": jieba_out,
        "multi_reference": multi,
    }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8", newline="\n") as f:
        # compact, one pair per line: small and still diffable
        text = json.dumps(expected, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        f.write(text.replace('{"bleu_tokens":', '\n{"bleu_tokens":'))
        f.write("\n")


if __name__ == "__main__":
    main()
