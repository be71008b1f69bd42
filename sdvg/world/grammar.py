"""The world's prompt language: a tiny grammar of coloured shapes, their motion and the background.

    PROMPT  := OBJECT [ "and" OBJECT ] [ "on" ("a"|"an") COLOUR "background" ]
    OBJECT  := ("a"|"an") [SIZE] COLOUR SHAPE [MOTION] [ "that turns" COLOUR ]
    MOTION  := "moving" ("left"|"right"|"up"|"down") | "moving in a circle"
             | "bouncing up and down" | "bouncing left and right" | "standing still"

Defaults: medium size, standing still, black background. All colours in a prompt must differ (the evaluator tells
objects apart by colour). Words are case-insensitive; commas and full stops are ignored.
"""
from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.25),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.15),
    "cyan": (0.15, 0.85, 0.90),
    "magenta": (0.85, 0.20, 0.85),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 6.0, "medium": 9.0, "big": 12.0}  # radius-like scale in pixels at 64x64
MOTIONS = ("still", "left", "right", "up", "down", "bounce_ud", "bounce_lr", "circle")
MOTION_WORDS = {
    "still": "standing still", "left": "moving left", "right": "moving right", "up": "moving up",
    "down": "moving down", "bounce_ud": "bouncing up and down", "bounce_lr": "bouncing left and right",
    "circle": "moving in a circle",
}
GRAMMAR = __doc__.split("\n\n")[1].strip("\n")
_FILLER = ("a", "an", "and", "on", "background", "that", "turns", "moving", "in", "bouncing", "standing", "still")
VOCABULARY: tuple[str, ...] = tuple(sorted(set(COLOURS) | set(SHAPES) | set(SIZES) | set(_FILLER)
                                           | {"left", "right", "up", "down"}))


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    size: str = "medium"
    motion: str = "still"
    turns: str | None = None  # colour it changes to halfway through the video

    @property
    def text(self) -> str:
        size = "" if self.size == "medium" else self.size + " "
        art = "an" if (size or self.colour)[0] in "aeiou" else "a"
        turn = f" that turns {self.turns}" if self.turns else ""
        return f"{art} {size}{self.colour} {self.shape} {MOTION_WORDS[self.motion]}{turn}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ObjectSpec, ...]
    background: str = "black"

    @property
    def prompt(self) -> str:
        """Canonical text (parse(scene.prompt) == scene)."""
        return " and ".join(o.text for o in self.objects) + f" on a {self.background} background"

    @property
    def colours(self) -> list[str]:
        out = [self.background]
        for o in self.objects:
            out += [o.colour] + ([o.turns] if o.turns else [])
        return out


class PromptError(ValueError):
    """A prompt outside the world's grammar; the message lists the grammar and the vocabulary."""


def _fail(prompt: str, why: str) -> PromptError:
    return PromptError(f"cannot parse {prompt!r}: {why}.\nThe built-in world understands prompts of the form\n"
                       f"{GRAMMAR}\nwith COLOUR in {{{', '.join(COLOURS)}}}, SHAPE in {{{', '.join(SHAPES)}}}, "
                       f"SIZE in {{small, medium, big}}.\nVocabulary: {' '.join(VOCABULARY)}.\n"
                       f"Example: 'a small red circle moving right on a blue background'.")


def tokenize(prompt: str) -> list[str]:
    return re.sub(r"[,.!;]", " ", prompt.lower()).split()


def parse(prompt: str) -> Scene:
    """Parse a prompt into a Scene, or raise PromptError naming the first problem."""
    words = tokenize(prompt)
    unknown = [w for w in words if w not in VOCABULARY]
    if unknown:
        raise _fail(prompt, f"unknown word(s) {', '.join(repr(w) for w in dict.fromkeys(unknown))}")
    pos = 0

    def peek(k: int = 0) -> str | None:
        return words[pos + k] if pos + k < len(words) else None

    def take(*options: str) -> str:
        nonlocal pos
        w = peek()
        if w not in options:
            raise _fail(prompt, f"expected {' or '.join(repr(o) for o in options)} at word {pos + 1}, got {w!r}")
        pos += 1
        return w

    def phrase(*seq: str) -> None:
        for s in seq:
            take(s)

    def obj() -> ObjectSpec:
        nonlocal pos
        take("a", "an")
        size = take(*SIZES) if peek() in SIZES else "medium"
        colour = take(*COLOURS)
        shape = take(*SHAPES)
        motion = "still"
        w = peek()
        if w == "moving":
            pos += 1
            if peek() == "in":
                phrase("in", "a", "circle")
                motion = "circle"
            else:
                motion = take("left", "right", "up", "down")
        elif w == "bouncing":
            pos += 1
            if peek() == "up":
                phrase("up", "and", "down")
                motion = "bounce_ud"
            else:
                phrase("left", "and", "right")
                motion = "bounce_lr"
        elif w == "standing":
            phrase("standing", "still")
        turns = None
        if peek() == "that":
            phrase("that", "turns")
            turns = take(*COLOURS)
        return ObjectSpec(colour, shape, size, motion, turns)

    if not words:
        raise _fail(prompt, "the prompt is empty")
    objects = [obj()]
    if peek() == "and":
        pos += 1
        objects.append(obj())
    background = "black"
    if peek() == "on":
        pos += 1
        take("a", "an")
        background = take(*COLOURS)
        take("background")
    if pos != len(words):
        raise _fail(prompt, f"unexpected {' '.join(words[pos:])!r} at the end")
    scene = Scene(tuple(objects), background)
    cols = scene.colours
    if len(set(cols)) != len(cols):
        raise _fail(prompt, "every colour in a prompt must be different (objects, their new colours and the "
                            "background), otherwise an object would be invisible or ambiguous")
    return scene


# ---- prompt sets ----------------------------------------------------------------------------------------------
# Held-out: colour x shape pairs the training set never shows (each colour and shape is seen elsewhere), so held-out
# prompts test composition, not vocabulary.
HELDOUT_PAIRS = frozenset({("red", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "triangle"),
                           ("cyan", "circle"), ("magenta", "square"), ("white", "triangle"), ("black", "circle")})


def is_heldout(scene: Scene) -> bool:
    return any((o.colour, o.shape) in HELDOUT_PAIRS for o in scene.objects)


def random_scene(rng: random.Random, heldout: bool | None = False, p_two: float = 0.15, p_turn: float = 0.15) -> Scene:
    """Draw a scene from the train (or held-out, or with None any) distribution."""
    while True:
        n = 2 if rng.random() < p_two else 1
        objs = []
        for _ in range(n):
            turns = rng.choice(list(COLOURS)) if rng.random() < p_turn else None
            objs.append(ObjectSpec(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(SIZES)),
                                   rng.choice(MOTIONS), turns))
        scene = Scene(tuple(objs), rng.choice(list(COLOURS)))
        cols = scene.colours
        if len(set(cols)) == len(cols) and heldout in (None, is_heldout(scene)):
            return scene


def prompt_lists(n_train: int = 24, n_heldout: int = 16, seed: int = 0) -> tuple[list[str], list[str]]:
    """The default benchmark prompts (deterministic; written to train_prompts.txt / heldout_prompts.txt)."""
    rng = random.Random(seed)
    out = []
    for heldout, n in ((False, n_train), (True, n_heldout)):
        seen: dict[str, None] = {}
        while len(seen) < n:
            seen[random_scene(rng, heldout, p_two=0.0 if len(seen) < n * 3 // 4 else 1.0).prompt] = None
        out.append(list(seen))
    return out[0], out[1]


def all_single_scenes() -> list[Scene]:
    """Every one-object scene without colour change (for coverage counts)."""
    return [Scene((ObjectSpec(c, s, z, m),), b) for c, s, z, m, b in
            itertools.product(COLOURS, SHAPES, SIZES, MOTIONS, COLOURS) if c != b]
