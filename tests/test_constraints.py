"""The optional performance grammar used while sampling (`--constrain`)."""

from __future__ import annotations

import torch

from perceiver_ar_music.sampling.constraints import PerformanceGrammar
from perceiver_ar_music.model.perceiver_ar import PerceiverAR
from perceiver_ar_music.sampling.sampler import sample_ids
from perceiver_ar_music.data.tokenizer import load_tokenizer
from perceiver_ar_music.data.vocab import NOTE_OFF, NOTE_ON, VELOCITY
from tests.tiny import tiny_model


def violations(ids: list[int], vocab) -> list[str]:
    """Grammar violations of a sequence, checked the slow, obvious way."""
    found, sounding, velocity_due = [], set(), False
    for i, tok in enumerate(ids):
        kind, pitch = vocab.kind[tok], vocab.pitch[tok]
        if velocity_due != (kind == VELOCITY):
            found.append(f"{i}: velocity misplaced")
        if tok in (vocab.pad_id, vocab.bos_id):
            found.append(f"{i}: PAD/BOS")
        if kind == NOTE_ON:
            if pitch in sounding:
                found.append(f"{i}: note-on of sounding pitch {pitch}")
            sounding.add(pitch)
        if kind == NOTE_OFF:
            if pitch not in sounding:
                found.append(f"{i}: note-off of silent pitch {pitch}")
            sounding.discard(pitch)
        velocity_due = kind == NOTE_ON
    return found


def random_model(vocab_size: int) -> PerceiverAR:
    model = tiny_model(vocab_size, max_seq_len=64, num_latents=16)
    torch.nn.init.normal_(model.to_logits.weight, std=1.0)
    return model.eval()


def test_constrained_sampling_never_breaks_the_grammar():
    vocab = load_tokenizer().vocab
    model = random_model(len(vocab))
    prompt = torch.tensor([[vocab.bos_id, vocab.note_on_id[60], vocab.velocity.index(63)]] * 3)
    free = sample_ids(model, prompt, 300, seed=0)
    assert any(violations(row[1:].tolist(), vocab) for row in free)  # the check can fail
    grammar = PerformanceGrammar(vocab)
    out = sample_ids(model, prompt, 300, seed=0, allowed_tokens=grammar, eos_id=vocab.eos_id)
    for row in out:
        ids = row[1:].tolist()
        if vocab.eos_id in ids:
            ids = ids[: ids.index(vocab.eos_id)]
        assert violations(ids, vocab) == []


def test_state_follows_the_primer_incrementally():
    vocab = load_tokenizer().vocab
    grammar = PerformanceGrammar(vocab)
    on60, off60 = vocab.note_on_id[60], vocab.note_off_id[60]
    seq = torch.tensor([[vocab.bos_id, on60]])
    allowed = grammar(seq)[0]
    assert allowed.sum() == 32 and all(vocab.kind[i] == VELOCITY for i in torch.nonzero(allowed).flatten().tolist())
    seq = torch.cat((seq, torch.tensor([[vocab.velocity.index(63)]])), dim=1)
    allowed = grammar(seq)[0]
    assert not allowed[on60] and allowed[off60] and not allowed[vocab.note_off_id[61]]
    assert allowed[vocab.eos_id] and not allowed[vocab.pad_id] and not allowed[vocab.bos_id]
    seq = torch.cat((seq, torch.tensor([[off60]])), dim=1)
    allowed = grammar(seq)[0]
    assert allowed[on60] and not allowed[off60]
