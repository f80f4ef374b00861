"""Tiny local stand-ins for real models: tokenizers trained here, random models saved as real folders.

Tests, benchmarks and demos use these instead of the Hugging Face Hub (which they must never
reach). The tokenizer is byte-level BPE trained with `tokenizers` on bundled Chinese/English text
and a small vocabulary, so most Chinese characters are split into several byte tokens, exactly the
situation BLOOM's tokenizer creates. Two model families are built so nothing is BLOOM-only:
BLOOM with Firefly's `<s>`/`</s>` tokens and no chat template, and Qwen2 with a ChatML
`chat_template`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

BLOOM_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3, as in BLOOM
CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def kit_corpus() -> str:
    """The bundled mixed Chinese/English text the test tokenizers are trained on."""
    return resources.files("firefly_core").joinpath("assets/kit_corpus.txt").read_text("utf-8")


def train_byte_bpe(
    texts: Iterable[str], vocab_size: int, specials: tuple[str, ...], min_frequency: int = 2
):
    """Train a byte-level BPE `tokenizers.Tokenizer` (all 256 byte tokens always present)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def build_tokenizer(family: str = "bloom", vocab_size: int = 400):
    """A transformers fast tokenizer for `family` ("bloom" or "qwen2"), trained on the kit corpus."""
    from transformers import PreTrainedTokenizerFast

    lines = kit_corpus().splitlines()
    if family == "bloom":
        raw = train_byte_bpe(lines, vocab_size, BLOOM_SPECIALS)
        return PreTrainedTokenizerFast(
            tokenizer_object=raw,
            unk_token="<unk>",
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            padding_side="left",
        )
    if family == "qwen2":
        raw = train_byte_bpe(lines, vocab_size, CHATML_SPECIALS)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=raw,
            eos_token="<|im_end|>",
            pad_token="<pad>",
            additional_special_tokens=["<|endoftext|>", "<|im_start|>"],
            padding_side="left",
        )
        tok.chat_template = CHATML_TEMPLATE
        return tok
    raise ValueError(f"unknown test family {family!r}")


@dataclass(frozen=True)
class TinyShape:
    hidden: int = 32
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 64
    max_positions: int = 1024


def build_model_folder(
    out: Path,
    family: str = "bloom",
    *,
    shape: TinyShape = TinyShape(),
    tie_word_embeddings: bool = True,
    vocab_size: int = 400,
    seed: int = 0,
    dtype: str = "float32",
    max_shard_size: str | None = None,
) -> Path:
    """Save a random `family` model with its tokenizer as a standard Hugging Face folder.

    The initializer range is larger than usual so logits are peaked: greedy decoding then has no
    near-ties, and comparisons of token sequences between implementations are meaningful.
    """
    import torch
    from transformers import BloomConfig, BloomForCausalLM, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    tok = build_tokenizer(family, vocab_size)
    torch.manual_seed(seed)
    if family == "bloom":
        config = BloomConfig(
            vocab_size=len(tok),
            hidden_size=shape.hidden,
            n_layer=shape.layers,
            n_head=shape.heads,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            initializer_range=0.2,
        )
        model = BloomForCausalLM(config)
        gen = GenerationConfig(
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        )
    elif family == "qwen2":
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        eot = tok.convert_tokens_to_ids("<|endoftext|>")
        config = Qwen2Config(
            vocab_size=len(tok),
            hidden_size=shape.hidden,
            intermediate_size=shape.intermediate,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.kv_heads,
            max_position_embeddings=shape.max_positions,
            bos_token_id=None,
            eos_token_id=im_end,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            initializer_range=0.2,
        )
        model = Qwen2ForCausalLM(config)
        gen = GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=tok.pad_token_id)
    else:
        raise ValueError(f"unknown test family {family!r}")
    model = model.to(getattr(torch, dtype)).eval()
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    gen.save_pretrained(out)
    tok.save_pretrained(out)
    return out
