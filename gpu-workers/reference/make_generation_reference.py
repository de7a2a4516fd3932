#!/usr/bin/env python3
"""Greedy-generation and tokenizer reference for the Rust generation worker.

Loads SmolLM2-135M-Instruct from a GGUF file with Hugging Face transformers (which
dequantizes every tensor to fp32 and runs the stock PyTorch Llama), and writes to
generation.json:

  * tokenizer: transformers' token ids for ChatML, digit, emoji, code and CJK strings
    (the tokenizer is rebuilt from the same GGUF metadata);
  * chat_template: transformers' apply_chat_template() text for the fixed conversations;
  * references[]: per GGUF file (keyed by SHA-256), greedy outputs of 32 new tokens for
    each fixed ChatML prompt: prompt ids, output ids, text, and per step the logit gap
    between the best and second-best token (where it is tiny, fp32-vs-quantized arithmetic
    may legitimately pick the other token), plus the top logits after the prompt.

Run it once per GGUF file; entries for other files already in the JSON are kept.

Environment (no model hub needed, everything from PyPI):
    python3 -m venv /tmp/genref-venv
    /tmp/genref-venv/bin/pip install torch transformers gguf numpy accelerate
    /tmp/genref-venv/bin/python make_generation_reference.py PATH/TO/model.gguf
"""

import argparse
import hashlib
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "generation.json")
NEW_TOKENS = 32

# Conversations rendered with ChatML + generation prompt. Keep in sync with
# gpu-workers/tests/generate_reference.rs (it reads them back from the JSON).
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "List three primary colors."},
    ],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "What is 12 + 35? Answer with the number only."}],
]

TOKENIZER_STRINGS = [
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "Digits: 1234567890, 3.14159 and 2026-11-29.",
    "Emoji: I \u2764\ufe0f \U0001f980 and \U0001f642! \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "fn main() {\n    println!(\"h\u00e9llo, w\u00f6rld\");\n}\n",
    "  leading spaces,\ttabs\n\nand   runs   of spaces  ",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068 \u4e2d\u6587",
    "<|im_end|><|endoftext|><file_sep>",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def quant_type(path):
    """Most common tensor type in the file (Q4_1 as shipped, Q8_0 after requantization)."""
    from collections import Counter

    from gguf import GGUFReader

    r = GGUFReader(path)
    return Counter(t.tensor_type.name for t in r.tensors).most_common(1)[0][0]


@torch.no_grad()
def greedy(model, ids, n):
    """Plain greedy loop with the KV cache (no generation_config surprises)."""
    out = model(torch.tensor([ids]), use_cache=True)
    past = out.past_key_values
    logits = out.logits[0, -1].float()
    first_top = torch.topk(logits, 10)
    gen, gaps = [], []
    for _ in range(n):
        top2 = torch.topk(logits, 2)
        tok = int(torch.argmax(logits))
        gen.append(tok)
        gaps.append(float(top2.values[0] - top2.values[1]))
        if tok == EOS:
            break
        out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1].float()
    return gen, gaps, first_top


def main():
    global EOS
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", help="path to the SmolLM2 GGUF file")
    args = ap.parse_args()
    path = os.path.abspath(args.gguf)
    d, name = os.path.split(path)

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    EOS = tok.convert_tokens_to_ids("<|im_end|>")

    data = {}
    if os.path.exists(OUT):
        with open(OUT) as f:
            data = json.load(f)

    data["generator"] = {
        "script": "gpu-workers/reference/make_generation_reference.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "attn_implementation": "eager",
        "dtype": "float32 (transformers dequantizes the GGUF)",
    }
    data["eos_id"] = EOS
    data["tokenizer"] = [
        {"text": s, "ids": tok.encode(s, add_special_tokens=False)} for s in TOKENIZER_STRINGS
    ]
    data["conversations"] = CONVERSATIONS
    data["chat_template"] = [
        tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CONVERSATIONS
    ]

    entry = {"gguf_file": name, "gguf_sha256": sha256(path), "quant": quant_type(path), "new_tokens": NEW_TOKENS, "prompts": []}
    for conv, text in zip(CONVERSATIONS, data["chat_template"]):
        ids = tok.encode(text, add_special_tokens=False)
        gen, gaps, first_top = greedy(model, ids, NEW_TOKENS)
        entry["prompts"].append(
            {
                "prompt_ids": ids,
                "output_ids": gen,
                "output_text": tok.decode(gen, skip_special_tokens=True),
                "logit_gaps": [round(g, 5) for g in gaps],
                "first_top_ids": [int(i) for i in first_top.indices],
                "first_top_logits": [round(float(v), 5) for v in first_top.values],
            }
        )
        print(f"{entry['quant']}: {text!r} -> {entry['prompts'][-1]['output_text']!r}", file=sys.stderr)

    refs = [r for r in data.get("references", []) if r["gguf_sha256"] != entry["gguf_sha256"]]
    refs.append(entry)
    data["references"] = refs
    with open(OUT, "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
