"""A tiny random BLIP-2 (OPT language model) saved with its tokenizer: the local ``--base-model`` folder of the tests.

Like a real ``Salesforce/blip2-opt-2.7b`` download, the folder holds the model's
``save_pretrained`` output and a tokenizer whose vocabulary matches the language
model's embeddings, with the ``<image>`` placeholder and ``image_token_index``
pointing at it. The tokenizer is a byte-level BPE (as OPT's is) learned on a few
Vietnamese sentences, so it keeps diacritics.

The language model is "pretrained": a few hundred text-only steps on those
sentences, as a real BLIP-2's LM knows its language. LoRA on ``q_proj``/``k_proj``
alone cannot teach a random LM anything (measured: a random tiny OPT stays at
the uniform loss ln 300 = 5.70 after 8 epochs at lr 3e-2), so an adapter test on
a random base would test nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.training.conftest import COLOURS
from vicap_jobs.models.hf_codec import HFTokenizerCodec, train_caption_tokenizer

IMAGE_SIZE = 32
HIDDEN = 32
NUM_QUERY_TOKENS = 4
VOCAB = 300  # the tokenizer's ids
LM_ROWS = VOCAB + 4  # the LM's embedding rows: padded past the tokenizer, as OPT's 50272 rows for 50265 ids
SENTENCES = [
    *(f"một bức ảnh màu {name}" for name in COLOURS),
    *(f"ảnh nền {name} trơn" for name in COLOURS),
    "con mèo nằm trên ghế",
    "người đàn ông đá bóng ở sân vận động",
    "những cầu thủ đang chơi bóng",
]
LM_STEPS = 150


def tiny_blip2(folder: Path, *, image_token: bool = True, lm_rows: int = LM_ROWS, seed: int = 0) -> Path:
    """A random Blip2ForConditionalGeneration + OPT (``lm_rows`` embeddings) and its tokenizer in ``folder``.

    image_token=False: the tokenizer has no ``<image>`` and the config no ``image_token_index``
    (an older BLIP-2 folder); the family must add both.
    """
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    extra = ["<image>"] if image_token else []
    codec = train_caption_tokenizer(SENTENCES * 3, vocab_size=VOCAB, extra_special=extra)
    assert len(codec) == VOCAB
    torch.manual_seed(seed)
    vision = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * HIDDEN,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )
    qformer = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * HIDDEN,
        encoder_hidden_size=HIDDEN,
        max_position_embeddings=64,
    )
    text = dict(
        model_type="opt",
        vocab_size=lm_rows,
        hidden_size=HIDDEN,
        word_embed_proj_dim=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        ffn_dim=2 * HIDDEN,
        max_position_embeddings=64,
        dropout=0.0,  # the tiny LM's loss should move with its adapter, not with dropout noise
        bos_token_id=codec.bos_id,
        eos_token_id=codec.eos_id,
        pad_token_id=codec.pad_id,
    )
    image_token_index = codec.tokenizer.convert_tokens_to_ids("<image>") if image_token else None
    config = Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token_index,
    )
    model = Blip2ForConditionalGeneration(config)
    pretrain_language_model(model.language_model, codec)
    model.save_pretrained(str(folder))
    codec.tokenizer.save_pretrained(str(folder))
    return folder


def pretrain_language_model(lm: torch.nn.Module, codec: HFTokenizerCodec, steps: int = LM_STEPS) -> None:
    """Text-only next-token training of ``lm`` on SENTENCES after NUM_QUERY_TOKENS noise embeddings (full batch).

    The noise stands where BLIP-2 puts the query embeddings, so the text sits at the
    positions it will have in captioning and the LM learns to read past the prefix.
    """
    generator = torch.Generator().manual_seed(0)
    encoded = [codec.encode_caption(sentence) for sentence in SENTENCES]
    width = max(len(ids) for ids in encoded)
    ids = torch.tensor([row + [codec.pad_id] * (width - len(row)) for row in encoded])  # (N, W)
    labels = torch.cat(
        [torch.full((len(encoded), NUM_QUERY_TOKENS), -100), ids.masked_fill(ids == codec.pad_id, -100)], 1
    )
    optimizer = torch.optim.Adam(lm.parameters(), lr=1e-2)
    lm.train()
    for _ in range(steps):
        noise = 0.1 * torch.randn(len(encoded), NUM_QUERY_TOKENS, HIDDEN, generator=generator)  # (N, Q, D)
        embeds = torch.cat([noise, lm.get_input_embeddings()(ids)], dim=1)  # (N, Q + W, D)
        loss = lm(inputs_embeds=embeds, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lm.eval()
