"""A tiny random Llama and its tokenizer, built from nothing (no download) for the e2e tests.

``python -m tests.e2e.tiny_model DIR`` saves both to DIR, where ``transformers serve DIR``
loads them. The tests run it in a subprocess, so their own process never imports torch.

Every word of the made-up language is one token and decodes to itself, so a streamed reply
is one chunk per word. The weights are random but seeded, and decoding is greedy: the same
request gets the same reply, directly or through the proxy. The generation config names no
end-of-sequence token, so a reply runs to ``max_tokens`` unless a request names its own
(``generation_config``'s ``eos_token_id``) to end with ``stop``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    set_seed,
)

SYLLABLES = ("ka", "lo", "mi", "ru", "te", "sa", "no", "vi")
WORDS = tuple(a + b for a in SYLLABLES for b in SYLLABLES)
ROLES = ("system:", "user:", "assistant:")
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def training_text(lines: int = 400) -> list[str]:
    """Lines of the made-up language, each word in it many times over."""
    return [
        " ".join((ROLES[i % 3], *(WORDS[(i * 7 + k * 13) % len(WORDS)] for k in range(12))))
        for i in range(lines)
    ]


def build_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS))
    tokenizer.train_from_iterator(training_text(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, pad_token_id: int) -> LlamaForCausalLM:
    set_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=vocab_size,
        # Room for the long replies the tests cut short.
        max_position_embeddings=8192,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(do_sample=False, pad_token_id=pad_token_id)
    return model


def main(argv: list[str]) -> None:
    (folder,) = argv
    out = Path(folder)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    build_model(len(tokenizer), tokenizer.unk_token_id).save_pretrained(out)


if __name__ == "__main__":
    main(sys.argv[1:])
