"""Specification of tokenisation and padding layouts, on examples worked out by hand."""

from __future__ import annotations

import torch

from reftune.model.batching import collate_sft, encode, encode_sft, join_prompt_response, pad, positions
from reftune.model.modeling import train_tokenizer


class CharTokenizer:
    """One token per character (its code point); EOS is 1. Makes the expected ids readable."""

    eos_token_id = 1
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False  # the library never lets a tokenizer add BOS/EOS on its own
        return {"input_ids": [ord(c) for c in text]}


A, B, C, X, Y = (ord(c) for c in "abcxy")


def test_encode_sft_masks_the_prompt_and_ends_with_eos():
    ids, labels = encode_sft(CharTokenizer(), "abc", "xy", max_length=100)
    assert ids == [A, B, C, X, Y, 1]
    assert labels == [-100, -100, -100, X, Y, 1]


def test_encode_sft_cuts_long_pairs_from_the_right():
    ids, labels = encode_sft(CharTokenizer(), "abc", "xy", max_length=4)
    assert ids == [A, B, C, X]
    assert labels == [-100, -100, -100, X]  # the EOS is lost, the prompt kept whole


def test_encode_sft_with_a_real_tokenizer():
    tok = train_tokenizer(["Question:\n1 + 2\nAnswer reasoning:\n1 + 2 = 3\nThe answer is 3"] * 5, 280)
    prompt, target = "Question:\n1 + 2\nAnswer reasoning:\n", "1 + 2 = 3\nThe answer is 3"
    ids, labels = encode_sft(tok, prompt, target, max_length=320)
    n = len(encode(tok, prompt))
    assert ids[-1] == labels[-1] == tok.eos_token_id
    assert labels[:n] == [-100] * n and -100 not in labels[n:]
    assert labels[n:] == ids[n:]
    assert tok.decode(ids[:-1]) == prompt + target  # byte-level BPE: lossless, nothing added
    assert tok.bos_token_id not in ids


def test_pad_left_and_right():
    assert pad([[1, 2, 3], [4]], 0).tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad([[1, 2, 3], [4]], 0, side="left").tolist() == [[1, 2, 3], [0, 0, 4]]


def test_collate_sft_right_pads_ids_labels_and_mask():
    batch = collate_sft([([5, 6, 7], [-100, 6, 7]), ([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_positions_start_at_zero_on_the_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_join_prompt_response_aligns_responses_on_one_column():
    """Prompts left-padded to P=3, responses right-padded after them: response token j sits at column P+j
    in every row, so logits at column P-1+j predict it."""
    ids, attn, rmask, P = join_prompt_response([[5, 6, 7], [8]], [[9], [10, 11, 12]], pad_id=0)
    assert P == 3
    assert ids.tolist() == [[5, 6, 7, 9, 0, 0],
                            [0, 0, 8, 10, 11, 12]]
    assert attn.tolist() == [[1, 1, 1, 1, 0, 0],
                             [0, 0, 1, 1, 1, 1]]
    assert rmask.tolist() == [[1, 0, 0],
                              [1, 1, 1]]
    assert (ids[:, P:] * rmask).tolist() == [[9, 0, 0], [10, 11, 12]]


def test_join_prompt_response_with_empty_responses():
    ids, attn, rmask, P = join_prompt_response([[5, 6], [7]], [[], [4]], pad_id=0)
    assert (P, ids.tolist(), attn.tolist(), rmask.tolist()) == (
        2, [[5, 6, 0], [0, 7, 4]], [[1, 1, 0], [0, 1, 1]], [[0], [1]])
    ids, attn, rmask, P = join_prompt_response([[5, 6], [7]], [[], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 0], [0, 7, 0]]
    assert attn.tolist() == [[1, 1, 0], [0, 1, 0]]
    assert rmask.tolist() == [[0], [0]]


def test_encode_sft_loss_on_prompt_trains_on_every_token():
    ids, labels = encode_sft(CharTokenizer(), "abc", "xy", max_length=100, loss_on_prompt=True)
    assert ids == [A, B, C, X, Y, 1]
    assert labels == ids  # plain language modelling: nothing masked
