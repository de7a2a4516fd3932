"""The PyTorch peer of `vcos bench inference` (src/bench/inference.rs).

A long-lived process, so that the bench can alternate sides run by run without reloading the
models (transformers takes ~20 s to dequantise the GGUF). Protocol, one JSON object a line:

- stdin, first line: {"threads", "embed_dir", "gguf", "prompt", "sentences"};
- stdout: {"op": "ready", versions, "prompt_tokens"} once both models are loaded;
- then per request line {"op": "embed", "batch", "count"} or {"op": "generate", "concurrency",
  "tokens"}: one line with the same op, "items" (sentences, or generated tokens summed over the
  batch) and "seconds" (wall time of the call, model work only: no I/O).

Both models are read from the same files the Rust side loads: sentence-transformers on the
MiniLM directory, transformers on the Q8_0 GGUF (dequantised to fp32 at load: transformers has
no quantised CPU kernels for it). Greedy generation is forced to `tokens` new tokens
(`min_new_tokens`), left-padded batches of the same prompt.
"""

import json
import os
import sys
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def main():
    cfg = json.loads(sys.stdin.readline())
    threads = int(cfg["threads"])

    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    import sentence_transformers
    import transformers
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    embedder = SentenceTransformer(cfg["embed_dir"], device="cpu")
    gen_dir, gguf_file = os.path.split(cfg["gguf"])
    tokenizer = AutoTokenizer.from_pretrained(gen_dir, gguf_file=gguf_file)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(gen_dir, gguf_file=gguf_file, dtype=torch.float32).eval()
    prompt = cfg["prompt"]
    sentences = cfg["sentences"]
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    emit({
        "op": "ready",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "threads": torch.get_num_threads(),
        "prompt_tokens": prompt_tokens,
    })

    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req["op"] == "embed":
            texts = [sentences[i % len(sentences)] for i in range(int(req["count"]))]
            start = time.perf_counter()
            embedder.encode(texts, batch_size=int(req["batch"]), show_progress_bar=False)
            seconds = time.perf_counter() - start
            emit({"op": "embed", "items": len(texts), "seconds": seconds})
        elif req["op"] == "generate":
            n, tokens = int(req["concurrency"]), int(req["tokens"])
            batch = tokenizer([prompt] * n, add_special_tokens=False, padding=True, return_tensors="pt")
            with torch.inference_mode():
                start = time.perf_counter()
                out = model.generate(
                    **batch,
                    do_sample=False,
                    max_new_tokens=tokens,
                    min_new_tokens=tokens,
                    pad_token_id=tokenizer.pad_token_id,
                )
                seconds = time.perf_counter() - start
            generated = (out.shape[1] - batch["input_ids"].shape[1]) * n
            emit({"op": "generate", "items": generated, "seconds": seconds})
        else:
            raise ValueError(f"unknown op {req['op']!r}")


if __name__ == "__main__":
    main()
