"""benchmarks/kv_type_check.py's pieces that need no model: the flash-attention-off reference and the
identical-token share."""
import llama_cpp.llama_cpp as ll

from benchmarks.kv_type_check import flash_attention_off, share_identical


def test_flash_attention_off_applies_only_inside_its_block():
    assert ll.llama_context_default_params().flash_attn_type == ll.LLAMA_FLASH_ATTN_TYPE_AUTO
    with flash_attention_off():
        assert ll.llama_context_default_params().flash_attn_type == ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
    assert ll.llama_context_default_params().flash_attn_type == ll.LLAMA_FLASH_ATTN_TYPE_AUTO


def test_tokens_count_as_identical_until_the_outputs_part():
    reference = [[1, 2, 3, 4], [5, 6, 7, 8]]
    other = [[1, 2, 9, 4], [5, 6, 7, 8]]  # the 4 after the difference does not count
    assert share_identical(reference, other) == (6 / 8, 1)
