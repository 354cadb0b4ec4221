"""The toy world: 64x64 RGB scenes of simple shapes with plain-English captions over SD1 tokenizer words.

A scene is one main object (shape, fill colour, size, position) on a background colour, optionally with a
second, small object beside it. Captions name a random subset of those attributes, so prompts that omit
one get it at random. Concepts are held out of pretraining: their identity is a fill pattern (stripes, a
split, a bullseye, a dot) in two palette colours, which no caption word can express; each has a one-token
superclass (its shape word) and 5 reference images on two backgrounds.

numpy only, deterministic for a seed. Every image is rendered at 2x and averaged down (anti-aliasing).
"""

from __future__ import annotations

import dataclasses

import numpy

SIZE = 64
COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 75, 215), "yellow": (240, 215, 45),
           "purple": (135, 50, 175), "orange": (245, 135, 30), "white": (240, 240, 240), "black": (25, 25, 25)}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
RADIUS = {"small": 8.0, "large": 16.0}
POSITIONS = ("center", "left", "right", "top", "bottom")
ANCHORS = {"center": (32, 32), "left": (19, 32), "right": (45, 32), "top": (32, 19), "bottom": (32, 45)}
POSITION_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
# The trainer's prompt templates wrap a description ("a photo of a ..."): pretraining sees such wrappers too.
PREFIXES = ("a photo of", "a good photo of", "the photo of", "image of", "a photograph of", "a picture of")


@dataclasses.dataclass(frozen=True)
class Concept:
    name: str              # a readable name (not a caption word)
    superclass: str        # its shape word, one SD1 token
    pattern: str           # stripes | split | bullseye | dot
    colours: tuple         # (A, B) palette names
    backgrounds: tuple     # the reference images' backgrounds (3 on the first, 2 on the second)


CONCEPTS = (
    Concept("striped-circle", "circle", "stripes", ("red", "white"), ("blue", "green")),
    Concept("split-square", "square", "split", ("yellow", "blue"), ("purple", "black")),
    Concept("bullseye-circle", "circle", "bullseye", ("green", "white"), ("orange", "blue")),
)
TUNING_CONCEPT = Concept("dotted-square", "square", "dot", ("black", "orange"), ("white", "green"))
ALL_CONCEPTS = CONCEPTS + (TUNING_CONCEPT,)


@dataclasses.dataclass
class Object:
    shape: str
    size: str
    centre: tuple                      # (x, y) in pixels of the 64x64 image
    colour: str | None = None          # a plain fill ...
    concept: Concept | None = None     # ... or a concept's pattern


@dataclasses.dataclass
class Scene:
    background: str
    main: Object
    second: Object | None = None

    def labels(self) -> dict:
        """Integer labels for the evaluator's heads (-1 = not applicable)."""
        main, second = self.main, self.second
        return {"background": COLOUR_NAMES.index(self.background), "shape": SHAPES.index(main.shape),
                "size": SIZES.index(main.size), "position": nearest_position(main.centre),
                "colour": COLOUR_NAMES.index(main.colour) if main.colour else -1,
                "concept": ALL_CONCEPTS.index(main.concept) + 1 if main.concept in ALL_CONCEPTS else 0,
                "second": int(second is not None),
                "second_colour": COLOUR_NAMES.index(second.colour) if second and second.colour else -1,
                "second_concept": (ALL_CONCEPTS.index(second.concept) + 1 if second.concept in ALL_CONCEPTS else 0)
                if second else -1}


def nearest_position(centre) -> int:
    x, y = centre
    return min(range(len(POSITIONS)), key=lambda k: (ANCHORS[POSITIONS[k]][0] - x) ** 2 + (ANCHORS[POSITIONS[k]][1] - y) ** 2)


# --- rendering -------------------------------------------------------------------------------------------

def _inside(shape, x, y, r):
    """x, y: offsets from the centre in pixels; the shapes have about equal areas for one r."""
    if shape == "circle":
        return x * x + y * y <= r * r
    if shape == "square":
        h = 0.89 * r
        return (numpy.abs(x) <= h) & (numpy.abs(y) <= h)
    # an upward equilateral triangle, centroid at the centre, vertex distance s
    s = 1.4 * r
    return (y <= 0.5 * s) & (1.732 * numpy.abs(x) <= y + s)


def _fill(obj: Object, x, y, jitter):
    """RGB per pixel for the object's fill; x, y offsets from its centre."""
    if obj.concept is None:
        return numpy.broadcast_to(_rgb(obj.colour, jitter), x.shape + (3,))
    c = obj.concept
    a, b = _rgb(c.colours[0], jitter), _rgb(c.colours[1], jitter)
    r = RADIUS[obj.size]
    if c.pattern == "stripes":          # horizontal bands, 6.4 px each at the large size
        use_b = (numpy.floor(y / (r / 2.5)) % 2) == 1
    elif c.pattern == "split":          # left half A, right half B
        use_b = x >= 0
    elif c.pattern == "bullseye":       # a B disc of half the radius
        use_b = x * x + y * y <= (0.5 * r) ** 2
    else:                               # dot: a small B disc
        use_b = x * x + y * y <= (0.35 * r) ** 2
    return numpy.where(use_b[..., None], b, a)


def _rgb(name, jitter):
    return numpy.clip(numpy.array(COLOURS[name], dtype=numpy.float32) + jitter, 0, 255)


def render(scene: Scene, rng: numpy.random.Generator) -> numpy.ndarray:
    """[64, 64, 3] float32 in [0, 1]."""
    n = 2 * SIZE
    coords = (numpy.arange(n, dtype=numpy.float32) + 0.5) / 2.0
    X, Y = numpy.meshgrid(coords, coords)
    image = numpy.broadcast_to(_rgb(scene.background, rng.normal(0, 6, 3)), (n, n, 3)).copy()
    for obj in (scene.main, scene.second):
        if obj is None:
            continue
        x, y = X - obj.centre[0], Y - obj.centre[1]
        mask = _inside(obj.shape, x, y, RADIUS[obj.size])
        image = numpy.where(mask[..., None], _fill(obj, x, y, rng.normal(0, 6, 3)), image)
    image = image.reshape(SIZE, 2, SIZE, 2, 3).mean(axis=(1, 3))
    return (image / 255.0).astype(numpy.float32)


# --- scenes and captions -------------------------------------------------------------------------------------

def _centre(position, size, rng):
    if position is None:                 # unnamed: near the middle
        spread = 6.0 if size == "large" else 10.0
        return tuple(float(v) for v in 32 + rng.uniform(-spread, spread, 2))
    ax, ay = ANCHORS[position]
    return float(ax + rng.uniform(-2, 2)), float(ay + rng.uniform(-2, 2))


PATTERNS = ("stripes", "split", "bullseye", "dot")


def distractor(rng) -> Concept:
    """A pattern that is none of the concepts (another pattern, colour pair or shape): the evaluator's
    hard negatives."""
    while True:
        c = Concept("distractor", str(rng.choice(SHAPES)), str(rng.choice(PATTERNS)),
                    tuple(str(x) for x in rng.choice(COLOUR_NAMES, 2, replace=False)), ())
        if not any((c.superclass, c.pattern, c.colours) == (k.superclass, k.pattern, k.colours) for k in ALL_CONCEPTS):
            return c


def random_scene(rng, concept: Concept | None = None, background=None, size=None, position=None, colour=None,
                 shape=None, second=None):
    """A random scene; any attribute given is fixed. ``second``: True / False / None (random, p 0.25), a
    (colour, shape) pair or a Concept (drawn small, as the second object always is)."""
    if second is None:
        second = rng.random() < 0.25
    if second is True:
        second = (str(rng.choice(COLOUR_NAMES)), str(rng.choice(SHAPES)))
    if concept is not None:
        shape = concept.superclass
        used = set(concept.colours)
    else:
        shape = shape or str(rng.choice(SHAPES))
        colour = colour or str(rng.choice(COLOUR_NAMES))
        used = {colour}
    if background is None:
        background = str(rng.choice([c for c in COLOUR_NAMES if c not in used]))
    if second:
        size = "large"                   # the second object is small, the main one large
        if position is None or position == "center":
            position = str(rng.choice(["left", "right", "top", "bottom"]))
    size = size or str(rng.choice(SIZES))
    main = Object(shape, size, _centre(position, size, rng), colour=None if concept else colour, concept=concept)
    other = None
    if second:
        opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[position]
        if isinstance(second, Concept):
            other = Object(second.superclass, "small", _centre(opposite, "small", rng), concept=second)
        else:
            other = Object(second[1], "small", _centre(opposite, "small", rng), colour=second[0])
    return Scene(background, main, other), position


def caption(scene: Scene, position, rng, drop=0.3, word_for_main=None) -> str:
    """A caption naming a random subset of the scene's attributes (each kept with p 1 - drop), in the
    fixed order "[prefix] a [size] [colour] <shape> [position] [on a <bg> background] [and a small <c> <s>]".
    ``word_for_main`` replaces "[colour] <shape>" (a trigger word); the main object's pattern is never named."""
    keep = lambda p=drop: rng.random() >= p
    main = scene.main
    words = []
    if keep(0.6):
        words += str(rng.choice(PREFIXES)).split()
    words.append("a")
    if keep(0.4):
        words.append(main.size)
    if word_for_main is not None:
        words.append(word_for_main)
    else:
        if main.colour and keep(0.15):
            words.append(main.colour)
        words.append(main.shape)
    if position and keep():
        words += POSITION_WORDS[position].split()
    if keep():
        words += ["on", "a", scene.background, "background"]
    if scene.second is not None and keep(0.1):
        words += ["and", "a", "small", scene.second.colour, scene.second.shape]
    return " ".join(words)


def caption_corpus(count=6000, seed=0) -> list[str]:
    """Pretraining-distribution captions: the corpus for Perfusion's text-encoding covariance C on this
    world's encoder (the pack's default corpus is English captions, words this encoder never saw)."""
    rng = numpy.random.default_rng([seed, 30])
    return [caption(*random_scene(rng), rng) for _ in range(count)]


def training_pair(rng):
    """One pretraining example: (image, caption) of a concept-free scene; the caption is empty with p 0.1
    (for classifier-free guidance)."""
    scene, position = random_scene(rng)
    text = "" if rng.random() < 0.1 else caption(scene, position, rng)
    return render(scene, rng), text


def batch(rng, n):
    images, texts = zip(*(training_pair(rng) for _ in range(n)))
    return numpy.stack(images), list(texts)


def references(concept: Concept, seed=0, count=5) -> numpy.ndarray:
    """The concept's reference images: large (one small), near the centre, on its two backgrounds."""
    rng = numpy.random.default_rng([seed, ALL_CONCEPTS.index(concept), 77])
    images = []
    for k in range(count):
        background = concept.backgrounds[0] if k < 3 else concept.backgrounds[1]
        scene, _ = random_scene(rng, concept, background=background, size="small" if k == 4 else "large",
                                second=False)
        images.append(render(scene, rng))
    return numpy.stack(images)
