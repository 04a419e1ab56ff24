"""Sided classes: a horizontal flip turns a left door into a right one, so the flip must swap their labels, or
half the time the model is taught the wrong side. Pairs come from the class names (left/right, l/r as whole
words, in any case and with any of the usual separators; 'leftfoot' / 'rightfoot' when both exist) or are given as
data.flip_pairs."""

from __future__ import annotations

import re
import warnings

from tinyseg.errors import ConfigError, DataWarning

SIDES = {"left": "right", "right": "left", "l": "r", "r": "l"}


def _words(name: str) -> list[str]:
    """'FrontLeftDoor', 'front_left-door', 'front left door' -> ['front', 'left', 'door']."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w for w in re.split(r"[\s_\-.:/]+", spaced.lower()) if w]


def _mirrored_word(word: str) -> str:
    """'left' -> 'right', 'l' -> 'r', and a side run into the word: 'leftfoot' -> 'rightfoot'."""
    if word in SIDES:
        return SIDES[word]
    for side in ("left", "right"):
        if word.startswith(side):
            return SIDES[side] + word[len(side) :]
    return word


def _mirrored(words: list[str]) -> list[str]:
    return [_mirrored_word(w) for w in words]


def flip_pairs(class_names: list[str], given: tuple[tuple[str, ...], ...] = ()) -> list[tuple[int, int]]:
    """Label pairs a horizontal flip swaps: `given` (pairs of class names), else the names that are each other's
    mirror (one side word swapped). Warns once, naming them, about names that look sided but have no partner."""
    index = {n: i for i, n in enumerate(class_names)}
    if given:
        for pair in given:
            if len(pair) != 2 or any(n not in index for n in pair):
                raise ConfigError(f"data.flip_pairs: {list(pair)} is not a pair of class names of {class_names}")
        return [(index[a], index[b]) for a, b in given]
    by_words = {tuple(_words(n)): i for i, n in enumerate(class_names)}
    pairs, lonely = [], []
    for i, name in enumerate(class_names):
        words = _words(name)
        mirrored = _mirrored(words)
        if mirrored == words:
            continue
        j = by_words.get(tuple(mirrored))
        if j is None or j == i:
            # A side run into a word pairs only with its partner: alone, 'leftover' is no side.
            if any(w in SIDES for w in words):
                lonely.append(name)
        elif i < j:
            pairs.append((i, j))
    if lonely:
        warnings.warn(
            f"classes {lonely} look sided but have no mirrored partner: a flip keeps their labels "
            "(give data.flip_pairs, or data.flip_prob=0 if the side matters)",
            DataWarning,
            stacklevel=2,
        )
    return pairs


def flip_map(num_classes: int, pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    """label -> its label after a horizontal flip."""
    out = list(range(num_classes))
    for a, b in pairs:
        out[a], out[b] = b, a
    return tuple(out)
