"""Texture-keeping sampling: targets and curves, the fork of every per-row state, the sampler's
candidates and choices, steering, and `generate`'s texture flags end to end."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from perceiver_ar_music.cli import main
from perceiver_ar_music.sampling.constraints import NoteRules
from perceiver_ar_music.sampling.decoding import CachedDecoder, ReferenceDecoder
from perceiver_ar_music.data.events import ids_to_notes, notes_to_ids
from perceiver_ar_music.data.vocab import TIME_SHIFT, VELOCITY
from perceiver_ar_music.model.perceiver_ar import PerceiverAR
from perceiver_ar_music.listening.music_stats import music_stats, span_stats
from perceiver_ar_music.sampling.sampler import SamplingConfig, sample_ids
from perceiver_ar_music.sampling.texture import (
    Curve, TextureSelector, TextureSettings, build_target, parse_pitch, primer_figures, texture_distance,
    texture_selector,
)
from perceiver_ar_music.data.tokenizer import load_tokenizer
from perceiver_ar_music.tools import midi_factory
from tests.tiny import tiny_model, write_tiny_checkpoint


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return tokenizer.vocab


def chords(count: int, every_s: float, size: int, length_s: float, pitch: int = 60) -> np.ndarray:
    """`count` chords of `size` notes (a third apart) every `every_s` seconds, each `length_s` long."""
    rows = [(pitch + 4 * v, i * every_s, i * every_s + length_s, 70) for i in range(count) for v in range(size)]
    return np.array(rows, dtype=np.float64)


# ----------------------------------------------------------------------------- curves and targets


@pytest.mark.parametrize("text, points, relative", [
    ("6", ((0.0, 6.0),), False),
    ("x0.5", ((0.0, 0.5),), True),
    ("0:4, 60:8,120:4", ((0.0, 4.0), (60.0, 8.0), (120.0, 4.0)), False),
    ("0:x1,30:x2", ((0.0, 1.0), (30.0, 2.0)), True),
])
def test_curves_parse_values_factors_and_points(text, points, relative):
    curve = Curve.parse(text)
    assert curve.points == points and curve.relative is relative


@pytest.mark.parametrize("text, message", [
    ("", "expected a value"), ("fast", "is not a number"), ("0:4,x", "SECONDS:VALUE"),
    ("10:4,5:8", "must increase"), ("0:4,0:5", "must increase"), ("0:x1,10:3", "all plain or all"),
    ("x0", "factor must be > 0"), ("-1:3", "seconds >= 0"), ("nan", "values must be in"), ("500", "values must be in"),
])
def test_bad_curves_are_one_line_errors(text, message):
    with pytest.raises(ValueError, match=message) as info:
        Curve.parse(text, low=0.0, high=100.0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["6", "x0.5", "0:4,60:8,120:4", "0:x1,30:x2", "10:2.5"])
def test_a_curve_reads_back_from_its_text(text):
    assert Curve.parse(Curve.parse(text).as_text()) == Curve.parse(text)


def test_a_curve_interpolates_and_holds_its_ends():
    curve = Curve.parse("10:4,70:10")
    assert [curve.at(t) for t in (0, 10, 40, 70, 500)] == [4.0, 4.0, 7.0, 10.0, 10.0]


def test_pitches_by_number_or_name():
    assert [parse_pitch(t) for t in ("60", "C4", "A4", "F#3", "Bb5", "C-1")] == [60, 60, 69, 54, 82, 0]
    with pytest.raises(ValueError, match="0..127"):
        parse_pitch("C10")
    assert Curve.parse("C3,", pitch=True).points == ((0.0, 48.0),)


def test_the_primer_target_reads_its_last_part():
    slow = chords(10, 2.0, 2, 1.0)  # 0-20 s: 1 note/s, two voices
    fast = chords(40, 0.25, 4, 0.25, pitch=50)  # 20-30 s: 16 notes/s, four voices
    fast[:, 1:3] += 20.0
    notes = np.concatenate([slow, fast])
    figures, pitch_classes = primer_figures(notes, 30.0, last_s=10.0)
    assert figures["density"] == pytest.approx(16.0) and figures["voices"] == pytest.approx(4.0)
    whole, _ = primer_figures(notes, 30.0, last_s=None)
    assert whole["density"] == pytest.approx(len(notes) / 30.0)
    assert pitch_classes.sum() == pytest.approx(1.0) and list(pitch_classes[[2, 6, 10]]) == [0.5, 0.25, 0.25]  # 50 54 58 62
    assert primer_figures(np.zeros((0, 4)), 0.0) is None


def test_user_settings_override_and_scale_the_primer_figures():
    primer = primer_figures(chords(20, 0.5, 3, 0.5), 10.0)
    target = build_target({"density": Curve.parse("x2"), "voices": Curve.constant(1.5)}, primer)
    at = target.at(0.0)
    assert at["notes_per_second"] == pytest.approx(2 * primer[0]["density"])
    assert at["mean_polyphony"] == 1.5 and at["pitch_mean"] == pytest.approx(primer[0]["register"])
    assert "set: density, voices" in target.describe()
    assert {"note_length", "max_voices"} <= set(target.curves)  # the rest stays the primer's
    assert build_target({}, None) is None
    only = build_target({"density": Curve.constant(3.0)}, None)
    assert list(only.curves) == ["density"] and only.pitch_classes is None
    with pytest.raises(ValueError, match="needs a primer"):
        build_target({"density": Curve.parse("x2")}, None)


def test_set_voices_and_density_move_the_figures_that_follow_from_them():
    """voices = density x mean note length: asking half the voices at the same density halves
    the note length the target holds, and the max voices; a density set alone leaves them; what
    the user sets stays as set."""
    primer = primer_figures(chords(20, 0.5, 3, 0.5), 10.0)
    figures = primer[0]
    half = build_target({"voices": Curve.parse("x0.5")}, primer)
    assert half.steered == frozenset({"voices"})
    assert half.curves["note_length"].at(0) == pytest.approx(figures["note_length"] / 2)
    assert half.curves["max_voices"].at(0) == pytest.approx(max(1.0, figures["max_voices"] / 2))
    fast = build_target({"density": Curve.parse("x2")}, primer)  # alone: the primer's note length
    assert fast.curves["note_length"].at(0) == pytest.approx(figures["note_length"])
    both = build_target({"density": Curve.parse("x2"), "voices": Curve.parse("x0.5")}, primer)
    assert both.curves["note_length"].at(0) == pytest.approx(figures["note_length"] / 4)
    rising = build_target({"voices": Curve.parse("0:x1,60:x2")}, primer)
    assert rising.curves["note_length"].at(60) == pytest.approx(2 * figures["note_length"])
    kept = build_target({"voices": Curve.parse("x0.5"), "note_length": Curve.constant(0.3)}, primer)
    assert kept.curves["note_length"].at(0) == 0.3
    assert build_target({}, primer).steered == frozenset()
    assert build_target({}, primer).curves["note_length"].at(0) == pytest.approx(figures["note_length"])


def test_per_row_voice_limits_cap_one_row_and_hold_notes_of_another(vocab):
    """`limit_rows`: row 0 may not add a third voice, row 1 may not release a note younger than
    its hold; the other row of each is free; the limits follow a reorder."""
    on, off = vocab.note_on_id, vocab.note_off_id
    velocity = vocab.velocity.index(63)
    seqs = torch.tensor([[vocab.bos_id, on[60], velocity, on[64], velocity, vocab.shift_id[10]]] * 2)
    rules = NoteRules(vocab, grammar=True)
    rules.observe(seqs)
    with pytest.raises(RuntimeError, match="row_limits"):
        rules.limit_rows(torch.tensor([2, 99]), None)
    rules.row_limits = True
    assert rules.masks
    rules.limit_rows(torch.tensor([2, 99]), torch.tensor([0, 20]))  # 10 steps have passed
    allowed = rules.allowed()
    assert not allowed[0, on[67]] and allowed[1, on[67]]  # row 0: two voices sound, its cap
    assert allowed[0, off[60]] and not allowed[1, off[60]] and not allowed[1, off[64]]  # row 1 holds
    assert allowed[1, vocab.shift_id[10]]  # time goes on
    rules.reorder(torch.tensor([1, 1]))
    assert torch.equal(rules.row_polyphony, torch.tensor([99, 99]))
    assert not rules.allowed()[0, off[60]]
    later = torch.cat([seqs[[1, 1]], torch.full((2, 1), vocab.shift_id[10])], dim=1)
    rules.observe(later)  # 20 steps: old enough
    assert rules.allowed()[0, off[60]]
    free = NoteRules(vocab, grammar=False)  # without the grammar the hold touches only sounding notes
    free.row_limits = True
    free.observe(seqs)
    free.limit_rows(None, torch.tensor([20, 20]))
    assert not free.allowed()[0, off[60]] and free.allowed()[0, off[67]]


def test_rows_with_a_steered_velocity_follow_each_note_on_with_a_velocity(vocab):
    """Without the grammar a NoteOn may go without its Velocity (and plays the last one again); a
    row whose velocity is steered gets only Velocity ids right after a NoteOn, the other rows stay
    free, and the flag follows a reorder. The selector sets it for a set velocity."""
    on = vocab.note_on_id
    seqs = torch.tensor([[vocab.bos_id, on[60]]] * 2)
    rules = NoteRules(vocab, grammar=False, max_polyphony=12)
    rules.row_limits = True
    rules.observe(seqs)
    rules.limit_rows(None, None, torch.tensor([True, False]))
    allowed = rules.allowed()
    velocity_ids = torch.as_tensor(np.asarray(vocab.kind) == VELOCITY)
    assert torch.equal(allowed[0], velocity_ids)
    assert allowed[1, on[64]] and allowed[1, vocab.shift_id[10]]
    rules.reorder(torch.tensor([1, 1]))
    assert not rules.row_velocity.any()
    after_velocity = torch.cat([seqs, torch.full((2, 1), vocab.velocity.index(63))], dim=1)
    rules.limit_rows(None, None, torch.tensor([True, True]))
    rules.observe(after_velocity)
    assert rules.allowed()[0, on[64]]  # no longer due
    selector = TextureSelector(vocab, [build_target({"velocity": Curve.constant(40.0)}, None)], prompt_len=1, candidates=2)
    ruled = NoteRules(vocab, grammar=False, max_polyphony=12)
    selector.attach(ruled)
    kept = torch.as_tensor(np.concatenate([[vocab.bos_id], notes_to_ids(chords(40, 0.5, 3, 0.4), vocab)]))[None]
    ruled.observe(kept.expand(2, -1))
    selector.choose(kept.expand(2, -1), torch.zeros(2), 64)
    assert ruled.row_velocity.tolist() == [True, True]


def test_texture_without_limits_samples_as_it_did_before_the_rules_took_limits(vocab, tokenizer, tmp_path):
    """Attaching the rules changes nothing while the selector sets no limit (no set voices, the
    default cap and the velocity hold off): the limits are the only way the rules change tokens."""
    from perceiver_ar_music.model.checkpoint import load_model

    model = load_model(write_tiny_checkpoint(tmp_path, tokenizer)).model.eval()
    primer = primer_figures(chords(40, 0.5, 4, 1.0), 20.0)
    prompt = torch.tensor([[vocab.bos_id]])
    outs = []
    for attach in (False, True):
        selector = TextureSelector(vocab, [build_target({"density": Curve.parse("x0.5")}, primer)], 1,
                                   candidates=2, segment_tokens=16, window_s=4.0, voices_cap_slack=-1.0,
                                   velocity_band=0.0)
        rules = NoteRules(vocab, grammar=False, max_polyphony=12, max_note_steps=400)
        if attach:
            selector.attach(rules)
        outs.append(sample_ids(model, prompt.expand(2, -1), 300, SamplingConfig(), seed=0, selector=selector,
                               allowed_tokens=rules, amend_tokens=rules.amend, reorder=[rules.reorder]))
    assert torch.equal(outs[0], outs[1])


def test_voices_set_by_the_user_become_a_cap_and_a_hold_in_the_rules(vocab):
    primer = primer_figures(chords(40, 0.5, 4, 1.0), 20.0)  # 8 notes/s, 8 voices, 1 s notes
    selector = TextureSelector(vocab, [build_target({"voices": Curve.parse("x0.5")}, primer)], 1,
                               candidates=2, segment_tokens=8)
    cap, hold = selector.voice_limits(selector.targets[0], 0.0)
    wanted = selector.targets[0].at(0.0)
    assert cap == math.ceil(wanted["max_polyphony"]) and cap < primer[0]["max_voices"]
    assert hold == pytest.approx(selector.hold * wanted["mean_polyphony"] / wanted["notes_per_second"])
    plain = TextureSelector(vocab, [build_target({}, primer)], 1)
    primer_max = primer[0]["max_voices"]
    assert plain.voice_limits(plain.targets[0], 0.0) == (math.ceil(primer_max + 1), 0.0)  # the primer's own voices: a cap
    no_cap = TextureSelector(vocab, [build_target({}, primer)], 1, voices_cap_slack=-1.0)
    assert no_cap.voice_limits(no_cap.targets[0], 0.0) == (0, 0.0)
    denser = TextureSelector(vocab, [build_target({"density": Curve.parse("x2")}, primer)], 1)
    assert denser.voice_limits(denser.targets[0], 0.0) == (0, 0.0)  # another density: the primer's max does not hold
    rules = NoteRules(vocab, grammar=True, max_note_steps=400)
    selector.attach(rules)
    prompt = np.asarray(notes_to_ids(chords(40, 0.5, 4, 1.0), vocab), dtype=np.int64)
    tokens = torch.as_tensor(np.stack([prompt, prompt]))
    rules.observe(tokens)
    selector.choose(tokens, torch.zeros(2), 8)
    assert rules.row_polyphony.tolist() == [cap, cap]
    assert rules.row_min_steps.tolist() == [round(hold / vocab.seconds_per_step)] * 2


def test_the_distance_is_zero_on_target_and_grows_away_from_it():
    notes = chords(20, 0.5, 3, 0.5)
    stats = music_stats(notes)
    primer = primer_figures(notes, 10.0)
    target = build_target({}, primer)
    hist = primer[1]
    assert texture_distance(stats, hist, target, 0.0) == pytest.approx(0.0, abs=1e-9)
    sparse = music_stats(chords(5, 2.0, 1, 0.5))
    dense = music_stats(chords(80, 0.125, 3, 0.125))
    assert texture_distance(sparse, hist, target, 0.0) > 0.5
    assert texture_distance(dense, hist, target, 0.0) > 0.5
    # max voices counts only above its target: a thinner window pays through the mean voices alone
    max_only = build_target({"max_voices": Curve.constant(3.0)}, None)
    assert texture_distance(music_stats(chords(20, 0.5, 1, 0.5)), None, max_only, 0.0) == 0.0
    assert texture_distance(music_stats(chords(20, 0.5, 6, 0.5)), None, max_only, 0.0) == pytest.approx(0.5 * math.log(6.1 / 3.1))
    # the share of re-struck notes is in the target (the page shows it beside each window) but weighs nothing
    assert target.at(0.0)["restrike_fraction"] == pytest.approx(stats.restrike_fraction) and stats.restrike_fraction > 0.9
    line = music_stats(np.array([(60 + (2 * i) % 12, 0.5 * i, 0.5 * i + 0.5, 70) for i in range(30)], dtype=np.float64))
    assert line.restrike_fraction == 0.0
    assert texture_distance(dataclasses.replace(stats, restrike_fraction=0.0), hist, target, 0.0) == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------- forks of per-row state


M, N = 24, 8


def sharp_model() -> PerceiverAR:
    """A tiny random model with sharper logits (std 0.5), in eval mode."""
    model = tiny_model(50, depth=2, max_seq_len=M, num_latents=N)
    torch.nn.init.normal_(model.to_logits.weight, std=0.5)
    return model.double().eval()


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_a_reordered_cache_decodes_like_the_reordered_history_from_scratch(mode):
    """Fork mid-way (rows copied from others), then go on past resets and past the context: every
    logit equals that of a fresh decoder teacher-forced on the reordered history."""
    torch.manual_seed(1)
    model = sharp_model()
    seq = torch.randint(0, 50, (3, 2 * M + 7))
    fork_at, rows = 15, torch.tensor([2, 2, 0])
    forked = CachedDecoder(model, reset_latents=3, mode=mode)
    forked.prefill(seq[:, :4])
    for t in range(4, fork_at):
        forked.step(seq[:, t])
    forked.reorder(rows)
    history = torch.cat([seq[rows, :fork_at], seq[:, fork_at:]], dim=1)
    fresh = CachedDecoder(model, reset_latents=3, mode=mode)
    fresh.prefill(history[:, :4])
    for t in range(4, fork_at):
        fresh.step(history[:, t])
    reference = ReferenceDecoder(model)
    reference.prefill(seq[:, :fork_at])
    reference.reorder(rows)
    for t in range(fork_at, history.shape[1]):
        expected = fresh.step(history[:, t])
        torch.testing.assert_close(forked.step(history[:, t]), expected, rtol=1e-10, atol=1e-10)
        if forked.num_resets == 0:  # the reference is the exact model until the first reset
            torch.testing.assert_close(reference.step(history[:, t]), expected, rtol=1e-10, atol=1e-10)
        else:
            reference.step(history[:, t])
    assert forked.num_resets >= 3 and forked.length > M


@pytest.mark.slow
def test_a_reordered_compiled_step_decodes_like_the_eager_one():
    """`generate --compile` with texture-keeping: the compiled fixed-shape step, forked mid-way
    and driven past resets and the context, gives the eager step's logits (its caches and
    device-side counters are the ones the fork copies)."""
    torch.manual_seed(2)
    model = sharp_model().float()
    seq = torch.randint(0, 50, (3, 2 * M + 7))
    fork_at, rows = 15, torch.tensor([1, 0, 0])
    eager = CachedDecoder(model, reset_latents=3, mode="static")
    compiled = CachedDecoder(model, reset_latents=3, compile=True)
    a, b = eager.prefill(seq[:, :4]), compiled.prefill(seq[:, :4])
    for t in range(4, seq.shape[1]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        if t == fork_at:
            eager.reorder(rows)
            compiled.reorder(rows)
        a, b = eager.step(seq[:, t]), compiled.step(seq[:, t])
    assert compiled.mode == "static" and compiled.num_resets == eager.num_resets >= 3 and compiled.length > M
    # and the fork took: the compiled rows decode what the forked history decodes from scratch
    fresh = CachedDecoder(model, reset_latents=3, mode="static")
    history = torch.cat([seq[rows, :fork_at], seq[:, fork_at:]], dim=1)
    expected = fresh.prefill(history[:, :4])
    for t in range(4, history.shape[1]):
        expected = fresh.step(history[:, t])
    torch.testing.assert_close(b, expected, rtol=1e-5, atol=1e-5)


def test_reordered_note_rules_equal_rules_that_saw_the_reordered_history(vocab):
    torch.manual_seed(0)
    seqs = torch.tensor([
        [vocab.bos_id, vocab.note_on_id[60], vocab.velocity.index(63), vocab.shift_id[50]],
        [vocab.bos_id, vocab.note_on_id[64], vocab.shift_id[100], vocab.shift_id[100]],
    ])
    rules = NoteRules(vocab, grammar=True, max_polyphony=2, max_note_steps=150)
    rules.observe(seqs)
    rules.amend(torch.tensor([vocab.shift_id[100]] * 2), seqs)  # keeps a shift back on row 1
    rows = torch.tensor([1, 1])
    rules.reorder(rows)
    fresh = NoteRules(vocab, grammar=True, max_polyphony=2, max_note_steps=150)
    fresh.observe(seqs[rows])
    fresh.amend(torch.tensor([vocab.shift_id[100]] * 2), seqs[rows])
    for name in ("onset", "clock", "velocity_due", "kept"):
        assert torch.equal(getattr(rules, name), getattr(fresh, name)), name
    assert torch.equal(rules.allowed(), fresh.allowed())


# ----------------------------------------------------------------------------- the sampler


class PickRichest:
    """A selector stand-in: keeps the candidate with the most ids equal to `wanted`."""

    def __init__(self, candidates: int, segment_tokens: int, wanted: int) -> None:
        self.candidates, self.segment_tokens, self.wanted = candidates, segment_tokens, wanted
        self.bias = None
        self.calls: list[tuple[torch.Tensor, int]] = []

    def choose(self, tokens, segment_logp, steps):
        self.calls.append((tokens.clone(), steps))
        counts = (tokens == self.wanted).sum(1).view(-1, self.candidates)
        best = counts.argmax(1)
        return (torch.arange(counts.shape[0]) * self.candidates + best).repeat_interleave(self.candidates)


def test_the_sampler_keeps_the_chosen_candidate_every_segment_and_returns_one_row_per_prompt():
    torch.manual_seed(0)
    model = sharp_model().float()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    selector = PickRichest(candidates=5, segment_tokens=7, wanted=9)
    out = sample_ids(model, prompt, 30, SamplingConfig(), seed=3, selector=selector)
    assert out.shape == (2, 33) and torch.equal(out[:, :3], prompt)
    assert [steps for _, steps in selector.calls] == [7, 7, 7, 7, 2]  # four segments and the tail
    for tokens, _ in selector.calls:  # each segment starts from one kept history per prompt
        assert tokens.shape[0] == 10
    # after each choice all candidates of a prompt share the chosen history
    for (before, steps), (after, _) in zip(selector.calls, selector.calls[1:]):
        length = before.shape[1]
        shared = after[:, :length].view(2, 5, length)
        assert torch.equal(shared, shared[:, :1].expand_as(shared))
    final = selector.calls[-1][0].view(2, 5, -1)
    counts = (final == 9).sum(-1)
    assert torch.equal(out, final[torch.arange(2), counts.argmax(1)])
    again = sample_ids(model, prompt, 30, SamplingConfig(), seed=3, selector=PickRichest(5, 7, 9))
    assert torch.equal(out, again)  # reproducible for a seed


def test_texture_sampling_is_the_same_on_the_fixed_shape_step_and_the_reference_path():
    """The candidates' forks on the static (CUDA-graph) step and on the slow reference path
    give the dynamic cached path's tokens (within one window, where the three are exact)."""
    torch.manual_seed(0)
    model = tiny_model(50, depth=2, max_seq_len=64, num_latents=64)
    torch.nn.init.normal_(model.to_logits.weight, std=0.5)
    model = model.double().eval()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    runs = [sample_ids(model, prompt, 40, SamplingConfig(), seed=7, selector=PickRichest(3, 9, 5), **kwargs)
            for kwargs in ({"decode_mode": "dynamic"}, {"decode_mode": "static"}, {"use_cache": False})]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_the_sampler_forks_rules_and_hooks_with_the_tokens(vocab):
    """With the guards on and a reorder hook, every fork keeps the guards' promise (no note
    longer than D) and the hook sees each choice."""
    torch.manual_seed(0)
    model = tiny_model(len(vocab), max_seq_len=64, num_latents=32).eval()
    rules = NoteRules(vocab, grammar=True, max_polyphony=3, max_note_steps=60)
    seen = []
    selector = PickRichest(candidates=3, segment_tokens=16, wanted=vocab.note_on_id[60])
    prompt = torch.tensor([[vocab.bos_id]])
    out = sample_ids(model, prompt, 200, SamplingConfig(), seed=0, allowed_tokens=rules, amend_tokens=rules.amend,
                     selector=selector, reorder=[rules.reorder, seen.append])
    assert len(seen) == len(selector.calls) == 13
    notes = ids_to_notes(out[0].tolist(), vocab)
    assert len(notes) and (notes[:, 2] - notes[:, 1]).max() <= 0.6 + 1e-9


def _density(notes: np.ndarray) -> float:
    return len(notes) / max(notes[:, 2].max(), 1e-9)


def _spread(notes: np.ndarray) -> float:
    return float(notes[:, 0].std())


def _loudness(notes: np.ndarray) -> float:
    return float(notes[:, 3].mean())


# figure, a low and a high target, how the kept music is measured, how far apart the two must end
# (the spread without its control: 34.7 and 34.9), extra selector settings (a random model wanders:
# steer its spread on what it just played)
STEERED = [
    ("density", (1.0, 30.0), _density, 3.0, {}),
    ("pitch_spread", (3.0, 20.0), _spread, 1.2, {"spread_window_s": 4.0}),
    ("velocity", (20.0, 110.0), _loudness, 1.5, {}),
]


@pytest.mark.parametrize("figure, targets, measure, factor, extra", STEERED, ids=[row[0] for row in STEERED])
def test_steering_moves_a_figure_towards_the_target(vocab, tokenizer, tmp_path, figure, targets, measure, factor, extra):
    """A random model, one target far below and one far above what it plays: the kept music
    follows (the likelihood term can not do that alone)."""
    checkpoint = write_tiny_checkpoint(tmp_path, tokenizer)
    from perceiver_ar_music.model.checkpoint import load_model

    model = load_model(checkpoint).model.eval()
    prompt = torch.tensor([[vocab.bos_id]])
    measured = {}
    for wanted in targets:
        target = build_target({figure: Curve.constant(wanted)}, None)
        selector = TextureSelector(vocab, [target], 1, candidates=4, segment_tokens=32, window_s=4.0, **extra)
        out = sample_ids(model, prompt, 600, SamplingConfig(), seed=0, selector=selector)
        measured[wanted] = measure(ids_to_notes(out[0].tolist(), vocab))
    assert measured[targets[1]] > factor * measured[targets[0]]


def test_a_narrow_register_gets_a_bias_towards_bass_and_treble_and_a_wide_one_the_opposite(vocab):
    """The spread control: music narrower than the target's pitch spread favours pitches far from
    the target's mean (and disfavours the middle); wider music, the reverse."""
    narrow, wide = chords(40, 0.5, 3, 0.4, pitch=60), chords(40, 0.5, 3, 0.4, pitch=40)
    wide[1::3, 0] += 36  # one voice three octaves up: a spread of about 17 semitones
    bias_at = {}
    for name, kept, held in (("too narrow", narrow, wide), ("too wide", wide, narrow)):
        figures = primer_figures(held, 20.0)
        target = build_target({"pitch_spread": Curve.constant(figures[0]["pitch_spread"])}, figures)
        selector = TextureSelector(vocab, [target], prompt_len=1, candidates=1, window_s=10.0)
        ids = torch.as_tensor(np.concatenate([[vocab.bos_id], notes_to_ids(kept, vocab)]))[None]
        selector.choose(ids, torch.zeros(1), 64)
        center = round(target.at(0.0)["pitch_mean"])
        bias = selector.bias[0]
        far = (bias[vocab.note_on_id[center + 24]] + bias[vocab.note_on_id[center - 24]]) / 2
        bias_at[name] = float(far - bias[vocab.note_on_id[center]])
    assert bias_at["too narrow"] > 0.5 and bias_at["too wide"] < -0.5
    # the primer's own spread, not set by the user: held from below by default (far narrower here)
    unset = TextureSelector(vocab, [build_target({}, primer_figures(wide, 20.0))], prompt_len=1, candidates=1)
    assert unset.spread_floor == 0.8
    unset.choose(torch.as_tensor(np.concatenate([[vocab.bos_id], notes_to_ids(narrow, vocab)]))[None], torch.zeros(1), 64)
    assert _far_over_middle(unset, vocab) > 0.5


def _far_over_middle(selector, vocab) -> float:
    """The spread bias: the NoteOns two octaves either side of the target's mean pitch against it."""
    center = round(selector.targets[0].at(0.0)["pitch_mean"])
    bias = selector.bias[0]
    return float((bias[vocab.note_on_id[center + 24]] + bias[vocab.note_on_id[center - 24]]) / 2 - bias[vocab.note_on_id[center]])


def test_the_primers_spread_is_widened_only_below_the_floor_and_the_widening_wears_off(vocab):
    """The primer's spread, not set by the user: music narrower than `spread_floor` times it gets
    the spread bias towards bass and treble; music above the floor, or wider than the primer, none
    (one-sided: a wider continuation is the model's to play); once above the floor again, the
    control's integral shrinks by SPREAD_LEAK each choice. Floor 0, or a density set by the
    user: never steered."""
    from perceiver_ar_music.sampling.texture import SPREAD_LEAK

    narrow, wide = chords(40, 0.5, 3, 0.4, pitch=60), chords(40, 0.5, 3, 0.4, pitch=40)
    wide[1::3, 0] += 36
    as_ids = lambda notes: torch.as_tensor(np.concatenate([[vocab.bos_id], notes_to_ids(notes, vocab)]))[None]
    wide_target = build_target({}, primer_figures(wide, 20.0))
    floored = TextureSelector(vocab, [wide_target], prompt_len=1, candidates=1, spread_floor=0.8)
    floored.choose(as_ids(narrow), torch.zeros(1), 64)
    assert _far_over_middle(floored, vocab) > 0.5
    wound = floored._steering[0].integral["spread"]
    assert wound > 0
    floored.choose(as_ids(wide), torch.zeros(1), 64)  # back above the floor: no error, the integral leaks
    assert floored._steering[0].integral["spread"] == pytest.approx(wound * SPREAD_LEAK)
    for music, primer in ((wide, narrow), (narrow, narrow)):  # wider than the primer, or the same: nothing
        selector = TextureSelector(vocab, [build_target({}, primer_figures(primer, 20.0))], prompt_len=1, candidates=1,
                                   spread_floor=0.8)
        selector.choose(as_ids(music), torch.zeros(1), 64)
        assert _far_over_middle(selector, vocab) == pytest.approx(0.0, abs=1e-6)
    off = TextureSelector(vocab, [wide_target], prompt_len=1, candidates=1, spread_floor=0.0)
    off.choose(as_ids(narrow), torch.zeros(1), 64)
    assert _far_over_middle(off, vocab) == pytest.approx(0.0, abs=1e-6)
    # a density set by the user comes first: no floor (its bias on far NoteOns would fight it)
    density_set = build_target({"density": Curve.constant(2.0)}, primer_figures(wide, 20.0))
    steered = TextureSelector(vocab, [density_set], prompt_len=1, candidates=1, spread_floor=0.8)
    steered.choose(as_ids(narrow), torch.zeros(1), 64)
    assert _far_over_middle(steered, vocab) == pytest.approx(0.0, abs=1e-6)


def test_the_velocity_control_points_to_a_set_level_and_holds_the_primers_only_beyond_a_band(vocab):
    """Music at velocity 70 against a set level of 30: louder Velocity ids lose, softer ones gain;
    against 110 the reverse. The primer's own velocity (not set) gets no bias at all while the
    music stays within the band of it, and beyond the band a tilt towards it, smaller than a set
    level's."""
    kept = chords(40, 0.5, 3, 0.4)
    ids = torch.as_tensor(np.concatenate([[vocab.bos_id], notes_to_ids(kept, vocab)]))[None]
    from perceiver_ar_music.data.events import tables
    from perceiver_ar_music.data.vocab import VELOCITY

    table = tables(vocab)
    velocity_ids = np.flatnonzero(table.kind == VELOCITY)
    loud, soft = (int(velocity_ids[np.argmin(np.abs(table.velocity[velocity_ids] - v))]) for v in (112, 24))
    tilt = {}
    for wanted in (30.0, 110.0):
        selector = TextureSelector(vocab, [build_target({"velocity": Curve.constant(wanted)}, None)], prompt_len=1, candidates=1)
        selector.choose(ids, torch.zeros(1), 64)
        tilt[wanted] = float(selector.bias[0][loud] - selector.bias[0][soft])
    assert tilt[30.0] < -0.5 and tilt[110.0] > 0.5
    figures = primer_figures(chords(40, 0.5, 3, 0.4), 20.0)
    played = figures[0]["velocity"]
    unset_tilt = {}
    for primer_level in (played + 11.0, played + 40.0, played - 40.0):
        figures[0]["velocity"] = primer_level
        unset = TextureSelector(vocab, [build_target({}, figures)], prompt_len=1, candidates=1)
        assert unset.velocity_band == 12.0
        unset.choose(ids, torch.zeros(1), 64)
        unset_tilt[primer_level - played] = float(unset.bias[0][loud] - unset.bias[0][soft])
    assert unset_tilt[11.0] == pytest.approx(0.0, abs=1e-6)  # within the band: the primer's dynamics are free
    assert 0.3 < unset_tilt[40.0] < tilt[110.0] and -tilt[110.0] < unset_tilt[-40.0] < -0.3
    off = TextureSelector(vocab, [build_target({}, figures)], prompt_len=1, candidates=1, velocity_band=0.0)
    off.choose(ids, torch.zeros(1), 64)
    assert float(off.bias[0][loud] - off.bias[0][soft]) == pytest.approx(0.0, abs=1e-6)  # band 0: not held


def _velocity_ids(vocab) -> tuple[np.ndarray, np.ndarray]:
    from perceiver_ar_music.data.events import tables
    from perceiver_ar_music.data.vocab import VELOCITY

    table = tables(vocab)
    ids = np.flatnonzero(table.kind == VELOCITY)
    return ids, table.velocity[ids]


def test_the_velocity_pull_peaks_at_the_set_level_and_follows_its_curve(vocab):
    """With the pull on, the Velocity id nearest the set level gets the largest bias of all
    Velocity ids, falling off on both sides (no swing past the level); a curve moves the peak."""
    kept = chords(40, 0.5, 3, 0.4)
    ids = torch.as_tensor(np.concatenate([[vocab.bos_id], notes_to_ids(kept, vocab)]))[None]
    velocity_ids, levels = _velocity_ids(vocab)
    for curve, at_end in ((Curve.constant(40.0), 40.0), (Curve.parse("0:100,10:30"), 30.0)):
        selector = TextureSelector(vocab, [build_target({"velocity": curve}, None)], prompt_len=1, candidates=1,
                                   velocity_pull=2.0, steer_velocity=0.0)
        selector.choose(ids, torch.zeros(1), 64)
        bias = selector.bias[0][velocity_ids].numpy()
        assert abs(levels[int(np.argmax(bias))] - at_end) <= 4
        nearest = int(np.argmin(np.abs(levels - at_end)))
        assert np.all(np.diff(bias[:nearest + 1]) >= 0) and np.all(np.diff(bias[nearest:]) <= 0)
        assert bias.max() - bias.min() > 1.0  # 2 logits per 32 steps: the far end is well below
    selector = TextureSelector(vocab, [build_target({"velocity": Curve.constant(40.0)}, None)], prompt_len=1, candidates=1,
                               velocity_pull=0.0, steer_velocity=0.0)
    selector.choose(ids, torch.zeros(1), 64)
    assert float(selector.bias[0][velocity_ids].abs().max()) == 0.0  # pull 0: off


def test_the_velocity_pull_grows_while_the_level_stays_off(vocab):
    """A model sure of its velocity (the Maple Leaf Rag stuck at 127, p 0.94) outweighs a fixed
    pull: while the kept music stays off the set level, the pull grows with the control's
    integral (up to 1 + steer_limit times); with no growth it stays as it was."""
    kept = chords(40, 0.5, 3, 0.4)
    kept[:, 3] = 112.0
    ids = torch.as_tensor(np.concatenate([[vocab.bos_id], notes_to_ids(kept, vocab)]))[None]
    velocity_ids, levels = _velocity_ids(vocab)
    at, off = int(np.argmin(np.abs(levels - 40))), int(np.argmin(np.abs(levels - 112)))
    gaps = {}
    for growth in (0.0, 1.0):
        selector = TextureSelector(vocab, [build_target({"velocity": Curve.constant(40.0)}, None)], prompt_len=1, candidates=1,
                                   velocity_pull=2.0, velocity_pull_growth=growth, steer_velocity=0.0)
        gaps[growth] = []
        for _ in range(30):
            selector.choose(ids, torch.zeros(1), 64)
            bias = selector.bias[0][velocity_ids]
            gaps[growth].append(float(bias[at] - bias[off]))
    assert gaps[0.0][0] == pytest.approx(gaps[0.0][-1]) == pytest.approx(2.0 * 72 / 32, abs=0.3)
    assert np.all(np.diff(gaps[1.0]) >= -1e-6) and gaps[1.0][-1] == pytest.approx(gaps[0.0][0] * (1 + 3.0), rel=0.05)


def test_the_velocity_control_reads_the_last_seconds_not_the_whole_window(vocab):
    """Ten loud seconds, then four at the set level: read over the last 4 s the level is reached
    (no push further down, which would swing past it); read over 12 s it looks too loud."""
    loud, soft = chords(20, 0.5, 3, 0.4), chords(8, 0.5, 3, 0.4)
    loud[:, 3], soft[:, 3] = 112.0, 40.0
    soft[:, 1:3] += 10.0
    ids = torch.as_tensor(np.concatenate([[vocab.bos_id], notes_to_ids(np.concatenate([loud, soft]), vocab)]))[None]
    velocity_ids, levels = _velocity_ids(vocab)
    high, low = int(np.argmin(np.abs(levels - 112))), int(np.argmin(np.abs(levels - 24)))
    tilt = {}
    for window_s in (4.0, 12.0):
        selector = TextureSelector(vocab, [build_target({"velocity": Curve.constant(40.0)}, None)], prompt_len=1,
                                   candidates=1, window_s=12.0, velocity_window_s=window_s, velocity_pull=0.0)
        selector.choose(ids, torch.zeros(1), 64)
        bias = selector.bias[0][velocity_ids]
        tilt[window_s] = float(bias[high] - bias[low])
    assert abs(tilt[4.0]) < 0.2 and tilt[12.0] < -0.5


def test_the_spread_control_reads_the_last_30_seconds_where_the_register_moves(vocab):
    """Three 10-s blocks of chords, each an octave higher: each 12-s stretch is narrow, the last
    30 s are wide. Asked for the 30 s's spread, the control sees no error; reading 12 s it would
    widen."""
    blocks = [chords(20, 0.5, 2, 0.4, pitch=48 + 12 * b) for b in range(3)]
    for b, block in enumerate(blocks):
        block[:, 1:3] += 10.0 * b
    music = np.concatenate(blocks)
    ids = torch.as_tensor(np.concatenate([[vocab.bos_id], notes_to_ids(music, vocab)]))[None]
    wide = float(span_stats(music, 0.0, 30.0).pitch_std)
    errors = {}
    for window in (30.0, 12.0):
        target = build_target({"pitch_spread": Curve.constant(wide)}, None)
        selector = TextureSelector(vocab, [target], prompt_len=1, candidates=1, spread_window_s=window)
        selector.choose(ids, torch.zeros(1), 64)
        errors[window] = selector._steering[0].integral["spread"]
    assert abs(errors[30.0]) < 0.02 and errors[12.0] > 0.1


def test_without_a_primer_each_sample_holds_its_own_first_seconds(vocab):
    selector = TextureSelector(vocab, [None], prompt_len=1, candidates=2, segment_tokens=8, anchor_s=2.0)
    notes = chords(12, 0.25, 2, 0.25)
    ids = np.concatenate([[vocab.bos_id], notes_to_ids(notes, vocab)])
    tokens = torch.as_tensor(np.stack([ids, ids, ids, ids]))
    rows = selector.choose(tokens, torch.zeros(4), 8)
    assert rows.tolist() in ([0, 0, 2, 2], [1, 1, 2, 2], [0, 0, 3, 3], [1, 1, 3, 3])
    assert selector.target_of(0) is not None and "own first seconds" in selector.target_of(0).source
    short = TextureSelector(vocab, [None], prompt_len=1, candidates=2, segment_tokens=8, anchor_s=60.0)
    assert short.choose(tokens, torch.zeros(4), 8).tolist() == [0, 0, 2, 2]  # not anchored: plain
    assert short.bias is not None and float(short.bias.abs().sum()) == 0.0


def test_the_selector_measures_the_recent_window_as_the_windows_do(vocab):
    notes = chords(60, 0.5, 3, 0.4)
    ids = np.concatenate([[vocab.bos_id], notes_to_ids(notes, vocab)])
    selector = TextureSelector(vocab, [build_target({}, primer_figures(notes, 30.0))], prompt_len=1, window_s=10.0)
    distance, seconds, stats = selector._score(ids, selector.targets[0])
    decoded = ids_to_notes(ids, vocab)
    end = float(decoded[:, 2].max())
    assert stats.as_dict() == pytest.approx(span_stats(decoded, end - 10.0, end).as_dict(), abs=1e-9)
    assert seconds == pytest.approx(end)


# ----------------------------------------------------------------------------- generate


def test_generate_holds_a_set_texture_and_shows_the_target_beside_each_window(tmp_path, tokenizer):
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", tokenizer)
    primer = tmp_path / "primer.mid"
    midi_factory.write_performance(primer, seed=3, num_notes=40)
    out = tmp_path / "out"
    # --length caps the run: the tiny random model's clock crawls (40 s took 43,633 tokens, 88 s of CPU, on an AMX machine)
    assert main(["generate", "--no-progress", "--checkpoint", str(checkpoint), "--primer", str(primer), "--seconds", "40",
                 "--length", "4000", "--seed", "0", "--no-audio", "--density", "0:x1,20:x2", "--voices", "2", "--register",
                 "C4", "--spread", "x1.5", "--candidates", "3", "--segment-tokens", "32", "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    sample = stats["samples"]["sample-01"]
    assert "3 candidates per sample" in stats["details"]["texture"]
    assert sample["texture_target"] and all("target" in w for w in sample["windows"])
    first = sample["windows"][0]["target"]
    assert first["mean_polyphony"] == 2.0 and first["pitch_mean"] == 60.0
    assert sample["primer"]["duration_s"] < 30  # so the target is taken over all of it
    assert first["pitch_std"] == pytest.approx(1.5 * sample["primer"]["pitch_std"], rel=1e-6)
    assert first["notes_per_second"] >= sample["primer"]["notes_per_second"] * 0.999
    page = (out / "index.html").read_text()
    assert '<tr class="target">' in page


def test_generate_with_texture_and_a_seconds_budget_ends_each_sample_there(tmp_path, tokenizer):
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", tokenizer)
    out = tmp_path / "out"
    assert main(["generate", "--no-progress", "--checkpoint", str(checkpoint), "--seconds", "6", "--num-samples", "2",
                 "--seed", "1", "--no-audio", "--density", "4", "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["details"]["stopped by"] == "seconds"
    for sample in stats["samples"].values():
        assert sample["windows"][0]["target"] == {"notes_per_second": 4.0}
        assert 5.0 <= sample["continuation"]["duration_s"] <= 8.0


@pytest.mark.parametrize("flags, message", [
    (["--density", "x2"], "needs a primer"),
    (["--density", "fast"], "argument --density"),
    (["--register", "H4"], "argument --register"),
    (["--spread", "0"], "argument --spread"),
    (["--spread", "x1.5"], "needs a primer"),
    (["--candidates", "1"], "argument --candidates"),
])
def test_bad_texture_settings_are_one_line_errors(tmp_path, tokenizer, capsys, flags, message):
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", tokenizer)
    try:
        code = main(["generate", "--no-progress", "--checkpoint", str(checkpoint), "--length", "10", "--no-audio",
                     "--out", str(tmp_path / "out"), *flags])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_no_texture_samples_as_plain_sampling_did(tmp_path, tokenizer):
    """--no-texture is today's path token for token: the same ids as sample_ids without a selector."""
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", tokenizer)
    out = tmp_path / "out"
    assert main(["generate", "--no-progress", "--checkpoint", str(checkpoint), "--length", "64", "--seed", "5",
                 "--no-audio", "--no-texture", "--no-guards", "--out", str(out)]) == 0
    from perceiver_ar_music.model.checkpoint import load_model
    from perceiver_ar_music.sampling.settings import DEFAULT_TOP_P

    model = load_model(checkpoint).model
    expected = sample_ids(model, torch.tensor([[tokenizer.vocab.bos_id]]), 64, SamplingConfig(top_p=DEFAULT_TOP_P),
                          seed=5, eos_id=tokenizer.vocab.eos_id)
    notes = ids_to_notes(expected[0, 1:].tolist(), tokenizer.vocab)
    notes = notes[notes[:, 2] > notes[:, 1]]  # a zero-length note makes no sound and is left out of a sample
    stats = json.loads((out / "stats.json").read_text())
    assert stats["samples"]["sample-01"]["continuation"]["note_count"] == len(notes)
    assert stats["details"]["texture"].startswith("off")


def test_texture_settings_default_on_and_off_for_greedy(tokenizer):
    from argparse import ArgumentParser

    from perceiver_ar_music.sampling.settings import GenerationSettings, add_arguments

    class Loaded:
        meta: dict = {}

        class config:
            num_latents = 8

    parser = ArgumentParser()
    add_arguments(parser)
    assert GenerationSettings.from_args(parser.parse_args([]), Loaded, tokenizer.vocab).texture.enabled
    assert not GenerationSettings.from_args(parser.parse_args(["--temperature", "0"]), Loaded, tokenizer.vocab).texture.enabled
    assert not GenerationSettings.from_args(parser.parse_args(["--no-texture"]), Loaded, tokenizer.vocab).texture.enabled
    settings = GenerationSettings.from_args(parser.parse_args(["--voices", "0:2,60:4"]), Loaded, tokenizer.vocab).texture
    assert settings.curves["voices"].at(30) == 3.0 and isinstance(settings, TextureSettings)
    assert texture_selector(TextureSettings(enabled=False), None, np.zeros(0), 1) is None
    # the nucleus spares the clock on request: every time shift, nothing else
    spared_settings = GenerationSettings.from_args(parser.parse_args(["--no-top-p-time"]), Loaded, tokenizer.vocab)
    assert "time shifts spared" in spared_settings.describe()["sampling"]
    spared = spared_settings.sampling
    kinds = {tokenizer.vocab.kind[i] for i in spared.top_p_exempt}
    assert kinds == {TIME_SHIFT} and len(spared.top_p_exempt) == tokenizer.vocab.max_shift_steps
    assert GenerationSettings.from_args(parser.parse_args(["--top-p-time"]), Loaded, tokenizer.vocab).sampling.top_p_exempt == ()


# ----------------------------------------------------------------------------- the studio


def test_the_studio_keeps_texture_and_records_each_windows_target(tmp_path, tokenizer):
    from perceiver_ar_music.runtime.errors import UserError
    from perceiver_ar_music.studio.engine import EXAMPLE, Studio

    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", tokenizer)
    studio = Studio(checkpoint, tmp_path / "takes", device="cpu")
    try:
        fields = {f["name"]: f for f in studio.config()["fields"]}
        assert fields["density"]["kind"] == "text" and fields["texture"]["default"] is True
        job = studio.submit({"primer": EXAMPLE, "settings": {"primer_seconds": 8, "length": 200, "num_samples": 2,
                                                              "seed": 0, "voices": "2", "density": "x1.5",
                                                              "candidates": 3}})
        assert studio.queue.wait(job, 120) and job.error is None, job.error
        assert job.request.texture.candidates == 3
        status = studio.job_status(job)
        assert status["tokens"] == 200 and status["num_samples"] == 2
        assert studio.live_roll(job, 1)[:4] == b"\x89PNG"
        takes = [json.loads((studio.store.folder / f"{name}.json").read_text()) for name in job.result]
        for take in takes:
            assert "voices 2" in take["texture"] and take["windows"][0]["target_voices"] == 2.0
            assert take["new_tokens"] == 200 and take["settings"]["density"] == "x1.5"
        with pytest.raises(UserError, match="needs a primer"):
            studio.submit({"settings": {"density": "x2"}})
    finally:
        studio.close()
