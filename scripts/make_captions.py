"""Writes data/captions.txt: the caption corpus for the text-encoder covariance C (issue 3).

The captions are generated here from a hand-written vocabulary (so the file is this project's own
work under its licence), deterministically: the same seed gives the same file. They imitate the
variety of web image captions: photos, art styles, people, animals, objects, places, light.

    python scripts/make_captions.py [--count 24000] [--seed 0]
"""

import argparse
import os
import random

COLORS = "red blue green yellow orange purple pink black white grey brown golden silver teal beige navy crimson turquoise".split()
MATERIALS = "wooden metal glass ceramic plastic leather woolen stone marble paper velvet cotton bronze copper knitted".split()
SIZES = "small large tiny huge tall little giant miniature long round".split()
AGES = "old vintage modern antique new rusty worn shiny ancient retro".split()
MOODS = "happy sleepy curious angry calm playful serious smiling fluffy cute majestic lonely".split()
PEOPLE = ["woman", "man", "girl", "boy", "child", "old man", "old woman", "young woman", "young man", "chef",
          "musician", "painter", "soldier", "farmer", "dancer", "skateboarder", "surfer", "doctor", "nurse",
          "student", "teacher", "bride", "groom", "couple", "family", "baby", "fisherman", "climber", "runner",
          "cyclist", "astronaut", "knight", "wizard", "princess", "cowboy", "pilot", "firefighter", "police officer"]
ANIMALS = ["dog", "cat", "puppy", "kitten", "horse", "cow", "sheep", "goat", "pig", "chicken", "duck", "swan", "owl",
           "eagle", "parrot", "penguin", "fox", "wolf", "bear", "teddy bear", "panda", "tiger", "lion", "leopard",
           "elephant", "giraffe", "zebra", "monkey", "rabbit", "squirrel", "deer", "frog", "turtle", "snake",
           "lizard", "butterfly", "bee", "fish", "dolphin", "whale", "shark", "octopus", "crab", "hamster", "hedgehog",
           "raccoon", "koala", "camel", "flamingo", "peacock", "golden retriever", "corgi", "husky", "poodle", "tabby cat"]
OBJECTS = ["car", "bicycle", "motorcycle", "bus", "train", "boat", "sailboat", "airplane", "truck", "tractor",
           "chair", "table", "sofa", "lamp", "clock", "vase", "teapot", "cup", "mug", "bowl", "plate", "bottle",
           "backpack", "suitcase", "umbrella", "hat", "shoe", "sneaker", "watch", "guitar", "piano", "violin",
           "camera", "laptop", "phone", "book", "candle", "mirror", "toy robot", "plush toy", "doll", "kite", "balloon",
           "sculpture", "statue", "robot", "helmet", "sword", "crown", "necklace", "ring", "jar", "basket", "bench",
           "fountain", "lantern", "typewriter", "radio", "television", "bookshelf", "bed", "door", "window", "bridge"]
FOOD = ["pizza", "burger", "cake", "cupcake", "donut", "salad", "sandwich", "bowl of soup", "plate of pasta",
        "sushi", "ice cream", "cup of coffee", "loaf of bread", "apple", "banana", "strawberries", "croissant",
        "pancakes", "steak", "bowl of ramen", "cheese board", "glass of wine", "lemonade", "chocolate bar"]
PLACES = ["on a beach", "in a forest", "in the mountains", "on a city street", "in a park", "in a garden",
          "in a kitchen", "in a living room", "in a bedroom", "in an office", "in a library", "in a cafe",
          "in a restaurant", "at a train station", "at an airport", "in a field of flowers", "in the snow",
          "in the desert", "by a lake", "by the river", "on a boat", "on a rooftop", "in a market", "in a museum",
          "in a classroom", "on a stage", "in a studio", "in the rain", "under a tree", "on a wooden table",
          "on a white background", "in front of a brick wall", "in a parking lot", "on a farm", "in a barn",
          "in space", "underwater", "in a castle", "in a cave", "on a bridge", "at the zoo", "in a stadium",
          "in a subway", "on a highway", "in a small village", "in Paris", "in Tokyo", "in New York", "in Venice"]
ACTIONS = ["sitting", "standing", "running", "walking", "sleeping", "jumping", "playing", "eating", "reading a book",
           "drinking coffee", "looking at the camera", "smiling", "laughing", "dancing", "swimming", "flying",
           "riding a bicycle", "holding an umbrella", "wearing a hat", "wearing sunglasses", "lying down",
           "playing with a ball", "posing", "waiting", "talking on the phone", "painting", "cooking", "singing"]
SHOTS = ["a photo of", "a close-up photo of", "a photograph of", "an image of", "a picture of", "a portrait of",
         "a wide shot of", "a black and white photo of", "a blurry photo of", "a selfie with", "a snapshot of",
         "a professional photo of", "an aerial view of", "a cropped photo of", "a macro shot of", "a stock photo of",
         "a painting of", "an oil painting of", "a watercolor painting of", "a drawing of", "a sketch of",
         "an illustration of", "a 3d render of", "a cartoon of", "an anime drawing of", "a digital art of",
         "a pencil sketch of", "a poster of", "a low poly model of", "a pixel art of", "an embroidery of"]
LIGHT = ["at sunset", "at night", "in the morning", "at golden hour", "on a sunny day", "on a cloudy day",
         "in soft light", "with dramatic lighting", "under neon lights", "in the fog", "in winter", "in autumn",
         "in spring", "in summer", "by candlelight", "with a bokeh background", "with studio lighting"]
STYLE = ["highly detailed", "4k", "sharp focus", "award winning", "trending on artstation", "35mm film",
         "shallow depth of field", "hdr", "cinematic", "minimalist", "vintage style", "high resolution",
         "in the style of van gogh", "in the style of a children's book", "impressionist", "photorealistic",
         "studio ghibli style", "pop art", "concept art", "product photography"]
COUNTS = ["two", "three", "four", "a group of", "a pair of", "several", "many"]


def noun_phrase(rng):
    pool = rng.choice([PEOPLE, ANIMALS, ANIMALS, OBJECTS, OBJECTS, FOOD])
    noun = rng.choice(pool)
    words = []
    if pool is ANIMALS and rng.random() < 0.4:
        words.append(rng.choice(MOODS))
    if pool in (OBJECTS, FOOD) and rng.random() < 0.5:
        words.append(rng.choice(COLORS + MATERIALS + AGES))
    if rng.random() < 0.2:
        words.insert(0, rng.choice(SIZES))
    if pool is PEOPLE and rng.random() < 0.3:
        return f"a {noun} in a {rng.choice(COLORS)} {rng.choice(['dress', 'jacket', 'shirt', 'coat', 'sweater'])}"
    if rng.random() < 0.12:
        plural = noun + ("es" if noun.endswith(("s", "ch", "sh")) else "s")
        return f"{rng.choice(COUNTS)} {' '.join(words + [plural])}"
    phrase = " ".join(words + [noun])
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(rng):
    parts = [rng.choice(SHOTS), noun_phrase(rng)]
    if rng.random() < 0.55:
        parts.append(rng.choice(ACTIONS))
    if rng.random() < 0.25:
        parts.append("next to " + noun_phrase(rng))
    if rng.random() < 0.8:
        parts.append(rng.choice(PLACES))
    if rng.random() < 0.35:
        parts.append(rng.choice(LIGHT))
    text = " ".join(parts)
    if rng.random() < 0.35:
        text += ", " + ", ".join(rng.sample(STYLE, rng.randint(1, 3)))
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    return text


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=24000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      "data", "captions.txt"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    seen, lines = set(), []
    while len(lines) < args.count:
        c = caption(rng)
        if c not in seen:
            seen.add(c)
            lines.append(c)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} captions to {args.out}")


if __name__ == "__main__":
    main()
