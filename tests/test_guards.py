"""The note guards while sampling: maximum note duration, polyphony cap, clean ending, limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiver_ar_music.sampling.constraints import NoteRules
from perceiver_ar_music.data.events import END, START, ids_to_note_steps
from perceiver_ar_music.sampling.continuation import release_open_notes, sample_notes, sampling_rules
from perceiver_ar_music.model.perceiver_ar import PerceiverAR
from perceiver_ar_music.listening.music_stats import polyphony
from perceiver_ar_music.sampling.note_limits import NoteLimits, note_limits
from perceiver_ar_music.sampling.sampler import SamplingConfig, sample_ids
from perceiver_ar_music.data.tokenizer import load_tokenizer
from perceiver_ar_music.data.vocab import NOTE_ON, TIME_SHIFT, VELOCITY
from tests.tiny import tiny_model


@pytest.fixture(scope="module")
def vocab():
    return load_tokenizer().vocab


def on(vocab, pitch):
    return [vocab.note_on_id[pitch], vocab.velocity.index(63)]


def off(vocab, pitch):
    return [vocab.note_off_id[pitch]]


def shift(vocab, steps):
    return [vocab.shift_id[steps]]


def rules_after(vocab, ids, **kwargs) -> NoteRules:
    rules = NoteRules(vocab, grammar=False, **kwargs)
    rules.observe(torch.tensor([ids]))
    return rules


def test_a_note_held_past_d_is_released_before_the_shift_that_would_carry_it(vocab):
    ids = [vocab.bos_id, *on(vocab, 60), *shift(vocab, 100), *shift(vocab, 100)]  # 60 sounds 200 steps
    seq = torch.tensor([ids])
    long_shift, short_shift = torch.tensor(shift(vocab, 100)), torch.tensor(shift(vocab, 50))
    guarded = lambda: rules_after(vocab, ids, max_note_steps=250)  # noqa: E731 (a fresh state per draw)
    assert guarded().amend(long_shift, seq).tolist() == off(vocab, 60)  # 300 > 250: forced NoteOff
    assert guarded().amend(short_shift, seq).tolist() == shift(vocab, 50)  # 250: still allowed
    note_on = torch.tensor([vocab.note_on_id[62]])
    assert guarded().amend(note_on, seq).tolist() == [vocab.note_on_id[62]]  # no time passes: kept
    # without the guard nothing is amended
    assert rules_after(vocab, ids).amend(long_shift, seq).tolist() == shift(vocab, 100)


def test_the_shift_the_model_drew_follows_the_forced_note_offs(vocab):
    """The guard takes no time out of the music: the shift it held back is emitted once the notes
    it would have carried too far are released, whatever is drawn meanwhile."""
    ids = [vocab.bos_id, *on(vocab, 60), *on(vocab, 64), *shift(vocab, 100), *shift(vocab, 100), *on(vocab, 67)]
    rules = NoteRules(vocab, grammar=False, max_note_steps=250)
    seq = torch.tensor([ids])
    emitted = []
    for drawn in (shift(vocab, 80), on(vocab, 72)[:1], on(vocab, 74)[:1], on(vocab, 76)[:1]):
        token = rules.amend(torch.tensor(drawn), seq)
        emitted.append(int(token))
        seq = torch.cat((seq, token[None]), dim=1)
    # 60 and 64 would sound 280 steps (> 250): both released, then the 80-step shift, then the draws
    assert emitted == [*off(vocab, 60), *off(vocab, 64), *shift(vocab, 80), vocab.note_on_id[76]]
    # 67 (80 steps old) is not released; the next long shift releases it
    assert rules.amend(torch.tensor(shift(vocab, 100)), torch.cat((seq, torch.tensor([on(vocab, 76)[1:]])), 1)).tolist() \
        == shift(vocab, 100)


def test_the_oldest_note_is_released_first_and_rows_are_independent(vocab):
    row0 = [vocab.bos_id, *on(vocab, 60), *shift(vocab, 100), *on(vocab, 64), *shift(vocab, 100)]
    row1 = [vocab.bos_id, *on(vocab, 67), *shift(vocab, 50) * 4]
    seq = torch.tensor([row0, row1])
    rules = NoteRules(vocab, grammar=False, max_note_steps=250)
    drawn = torch.tensor(shift(vocab, 100) * 2)
    # row 0: 60 is 200 steps old (300 > 250: released), 64 only 100; row 1: 67 is 200 steps old
    assert rules.amend(drawn, seq).tolist() == [vocab.note_off_id[60], vocab.note_off_id[67]]
    seq = torch.cat((seq, torch.tensor([[vocab.note_off_id[60]], [vocab.note_off_id[67]]])), dim=1)
    # both rows emit the shift they drew (the new draw is ignored); row 0 then plays on, row 1
    # strikes 70 and shifts again: 70 is young, nothing else sounds
    assert rules.amend(torch.tensor(shift(vocab, 1) * 2), seq).tolist() == shift(vocab, 100) * 2
    seq = torch.cat((seq, torch.tensor([shift(vocab, 100), shift(vocab, 100)])), dim=1)
    seq = torch.cat((seq, torch.tensor([[vocab.note_on_id[72], vocab.velocity.index(63)], on(vocab, 70)])), dim=1)
    # row 0: 64 is 200 old, 72 new -> 64 released before 100 more; row 1: nothing too old
    assert rules.amend(drawn, seq).tolist() == [vocab.note_off_id[64], vocab.shift_id[100]]


def test_polyphony_cap_masks_note_on_at_p(vocab):
    ids = [vocab.bos_id, *on(vocab, 60), *on(vocab, 64), *on(vocab, 67), *shift(vocab, 10)]
    seq = torch.tensor([ids])
    kind = torch.tensor(vocab.kind)
    at_cap = NoteRules(vocab, grammar=False, max_polyphony=3)(seq)[0]
    assert not at_cap[kind == NOTE_ON].any()
    assert at_cap[vocab.note_off_id[60]] and at_cap[vocab.shift_id[5]] and at_cap[vocab.eos_id]
    assert at_cap[kind != NOTE_ON].all()  # without the grammar the cap masks nothing else (velocities too)
    below = NoteRules(vocab, grammar=False, max_polyphony=4)(seq)[0]
    assert below.all()
    # one released: below the cap again; a second row with nothing sounding is unaffected
    released = torch.tensor([ids + off(vocab, 64), [vocab.bos_id] + shift(vocab, 1) * (len(ids))])
    mask = NoteRules(vocab, grammar=False, max_polyphony=3)(released)
    assert mask[:, kind == NOTE_ON].all()


def test_grammar_and_cap_combine(vocab):
    ids = [vocab.bos_id, *on(vocab, 60), *on(vocab, 64)]
    rules = NoteRules(vocab, grammar=True, max_polyphony=2)
    mask = rules(torch.tensor([ids + [vocab.note_on_id[67]]]))[0]  # a velocity is due: only velocities
    assert mask.sum() == sum(k == VELOCITY for k in vocab.kind)
    rules = NoteRules(vocab, grammar=True, max_polyphony=2)
    mask = rules(torch.tensor([ids]))[0]
    assert not mask[torch.tensor(vocab.kind) == NOTE_ON].any()
    assert mask[vocab.note_off_id[60]] and not mask[vocab.note_off_id[62]]


def biased_model(vocab, hold: bool, context: int = 32, latents: int = 8) -> PerceiverAR:
    """A random model that strikes many notes and rarely releases them (drones, dense chords)."""
    torch.manual_seed(0)
    model = tiny_model(len(vocab), max_seq_len=context,
                        num_latents=latents)
    head = torch.nn.Linear(32, len(vocab), bias=True)  # the model's head, with a bias to steer it
    torch.nn.init.normal_(head.weight, std=0.2)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[[vocab.note_on_id[p] for p in range(48, 84)]] = 2.0
        head.bias[[vocab.shift_id[s] for s in (25, 50, 100)]] = 3.0
        head.bias[[vocab.note_off_id[p] for p in range(128)]] = -3.0 if hold else 0.0
        head.bias[vocab.eos_id] = -10.0
    model.to_logits = head
    return model.eval()


def longest_and_densest(ids, vocab) -> tuple[int, int]:
    notes = ids_to_note_steps(ids, vocab)
    _, _, max_poly = polyphony(notes[:, START].astype(float), notes[:, END].astype(float))
    return int((notes[:, END] - notes[:, START]).max()), max_poly


def test_guards_hold_while_sampling_and_the_check_can_fail(vocab):
    model = biased_model(vocab, hold=True)
    prompt = torch.tensor([[vocab.bos_id]] * 2)
    free = sample_ids(model, prompt, 400, seed=0)
    assert longest_and_densest(free[0], vocab)[0] > 300 and longest_and_densest(free[0], vocab)[1] > 6
    for grammar in (True, False):
        rules = NoteRules(vocab, grammar=grammar, max_polyphony=6, max_note_steps=300)
        out = sample_ids(model, prompt, 400, seed=0, allowed_tokens=rules, amend_tokens=rules.amend)
        kinds = torch.tensor(vocab.kind)
        for row, free_row in zip(out, free):
            longest, densest = longest_and_densest(row[:-1], vocab)  # (the last token's state is not checked)
            assert longest <= 300 and densest <= 6
            # the guards only hold notes back: velocities and time shifts are written as often as without
            for kind in (VELOCITY, TIME_SHIFT):
                assert (kinds[row] == kind).sum() >= 0.5 * (kinds[free_row] == kind).sum() > 10


def test_guards_release_notes_without_dropping_the_shifts_drawn(vocab):
    """Every shift the model draws is emitted, at once or right after the NoteOffs forced in its
    place: the guarded music lasts as long as the draws say (the old guard dropped the shift and
    drew again, and models almost never draw a shift right after a NoteOff)."""
    model = biased_model(vocab, hold=True)
    prompt = torch.tensor([[vocab.bos_id]] * 2)
    rules = NoteRules(vocab, grammar=False, max_note_steps=300)
    steps = []

    def recording(new, sequences):
        emitted = rules.amend(new, sequences)
        steps.append((new.clone(), emitted.clone()))
        return emitted

    sample_ids(model, prompt, 400, seed=0, amend_tokens=recording)
    is_shift = torch.tensor(vocab.shift_steps) > 0
    forced = 0
    for row in range(2):
        kept = None
        for drawn, emitted in ((d[row].item(), e[row].item()) for d, e in steps):
            if kept is not None:  # after a forced NoteOff: more NoteOffs, then exactly the kept shift
                assert emitted == kept or emitted in vocab.note_off_id.values()
                kept = None if emitted == kept else kept
            elif emitted != drawn:
                assert is_shift[drawn] and emitted in vocab.note_off_id.values()
                kept, forced = drawn, forced + 1
            else:
                assert emitted == drawn
    assert forced > 5  # the guard acted


@pytest.mark.parametrize("constrain", [False, True])
def test_greedy_cached_equals_reference_with_guards(vocab, constrain):
    """Within one latent window the cached decoder is exact, so the guarded greedy samples agree."""
    model = biased_model(vocab, hold=True, context=64, latents=56).double()
    prompt = torch.tensor([[vocab.bos_id, *on(vocab, 60), *shift(vocab, 30)]] * 2)
    outs = []
    for use_cache in (True, False):
        rules = NoteRules(vocab, grammar=constrain, max_polyphony=3, max_note_steps=60)
        outs.append(sample_ids(model, prompt, 50, SamplingConfig(temperature=0), use_cache=use_cache,
                               allowed_tokens=rules if rules.masks else None, amend_tokens=rules.amend))
    assert outs[0].shape[1] == prompt.shape[1] + 50
    assert torch.equal(outs[0], outs[1])
    new = outs[0][0, prompt.shape[1]:]
    assert torch.isin(new, torch.tensor(list(vocab.note_off_id.values()))).any()  # the guards acted


def test_sampling_rules_switches(vocab):
    assert sampling_rules(vocab, "cpu", constrain=False, max_note_seconds=None, max_polyphony=None) is None
    assert sampling_rules(vocab, "cpu", constrain=False, max_note_seconds=0, max_polyphony=0) is None
    rules = sampling_rules(vocab, "cpu", constrain=False, max_note_seconds=3.0, max_polyphony=None)
    assert rules.max_note_steps == 300 and not rules.masks
    # a limit below one grid step is the shortest limit, not off
    assert sampling_rules(vocab, "cpu", constrain=False, max_note_seconds=0.004, max_polyphony=None).max_note_steps == 1
    rules = sampling_rules(vocab, "cpu", constrain=True, max_note_seconds=None, max_polyphony=8)
    assert rules.max_note_steps is None and rules.max_polyphony == 8 and rules.masks


def test_open_notes_get_a_clean_ending(vocab):
    # 60 ends after 0.5 s, 62 after 1.5 s (median 1.0); 64 still sounds 9 s later, 67 struck at the end
    ids = [*on(vocab, 60), *shift(vocab, 50), *off(vocab, 60), *on(vocab, 62), *on(vocab, 64),
           *shift(vocab, 100), *shift(vocab, 50), *off(vocab, 62)] + shift(vocab, 100) * 8 + on(vocab, 67)
    notes, primer_notes, boundary = sample_notes(np.array(ids), 0, vocab, max_note_seconds=4.0)
    assert primer_notes == 0 and boundary == 0
    by_pitch = {int(p): (s, e) for p, s, e, _ in notes}
    assert by_pitch[60] == pytest.approx((0.0, 0.5)) and by_pitch[62] == pytest.approx((0.5, 2.0))
    assert by_pitch[64] == pytest.approx((0.5, 4.5))  # capped at D = 4 s, not held to the end (10 s)
    assert by_pitch[67] == pytest.approx((10.0, 11.0))  # struck at the end: the median length
    unguarded, _, _ = sample_notes(np.array(ids), 0, vocab)
    assert {int(p): e for p, _, e, _ in unguarded}[64] == pytest.approx(10.0)
    # nothing open: unchanged
    closed = np.array([[60, 0.0, 1.0, 63]])
    assert release_open_notes(closed, np.array([False]), 2.0) is closed


def test_note_limits_from_pieces(vocab):
    # 200 one-second notes, two notes at a time; one 6-second drone among three notes at once
    piece = []
    for _ in range(100):
        piece += on(vocab, 60) + on(vocab, 64) + shift(vocab, 100) + off(vocab, 60) + off(vocab, 64)
    drone = on(vocab, 48) + on(vocab, 60) + on(vocab, 64) + shift(vocab, 100) * 6 + off(vocab, 48)
    limits = note_limits([np.array(piece), np.array(drone), np.array([], dtype=np.int64)], vocab)
    assert limits["notes"] == 203 and limits["note_seconds_p50"] == 1.0
    assert 1.0 <= limits["max_note_seconds"] < 6.0  # the 99th percentile ignores one drone in 203
    assert limits["max_polyphony"] == 3 and limits["polyphony_p50"] == 2
    with pytest.raises(ValueError):
        note_limits([np.array(shift(vocab, 5))], vocab)
    stored = NoteLimits.from_meta({"note_limits": limits})
    assert stored.max_polyphony == 3 and stored.max_note_seconds == limits["max_note_seconds"]
    assert NoteLimits.from_meta({}) == NoteLimits()


def test_the_midi_file_keeps_the_polyphony_the_guard_counted(vocab, tmp_path):
    """A zero-length note (struck and released, or re-struck, at one instant) makes no sound and
    the guard does not count it; lengthened in the file it would sound beside the others."""
    import json

    from perceiver_ar_music.cli import main
    from perceiver_ar_music.listening.sample_midi import write_sample_midi

    for lead in range(1, 12):  # onsets at several places of the file's tick grid
        ids = [vocab.bos_id, *shift(vocab, lead), *on(vocab, 60), *on(vocab, 64), *off(vocab, 64), *on(vocab, 71),
               *on(vocab, 71), *on(vocab, 67), *shift(vocab, 50), *off(vocab, 60), *off(vocab, 67), *off(vocab, 71)]
        for at in np.flatnonzero(np.isin(ids, vocab.note_on_id)):  # every NoteOn was allowed under P = 3
            assert NoteRules(vocab, grammar=False, max_polyphony=3)(torch.tensor([ids[:at]]))[0, ids[at]]
        notes, primer_notes, boundary = sample_notes(np.array(ids), 1, vocab)
        assert sorted(int(p) for p in notes[:, 0]) == [60, 67, 71]  # 64 and the first 71 made no sound
        path = tmp_path / f"sample-{lead}.mid"
        write_sample_midi(notes, primer_notes, boundary, path)
        assert main(["stats", str(path), "--json", str(tmp_path / "stats.json")]) == 0
        (figures,) = json.loads((tmp_path / "stats.json").read_text())["samples"].values()
        assert figures["continuation"]["max_polyphony"] == 3 == polyphony(notes[:, START], notes[:, END])[2]
