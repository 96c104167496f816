"""A generated multimodal data set in the Amazon Reviews 2018 format, where the next item depends on its image only.

Every item is a PIL-drawn shape of one colour family; titles are colour-neutral ("Compact Kettle 0412"). Each
session of a user stays within one colour family, so the target shares the history's colour: a model that sees the
images can rank the pool (the target plus never-interacted items, mostly of other colours) far above chance, one that
reads only the titles cannot. Written to RAW_DIR:

    reviews.jsonl    reviewerID, asin, unixReviewTime, overall       (one line per interaction)
    metadata.jsonl   asin, title, imageURLHighRes, imageURL, category (one line per item)
    images/{asin}.png
    synthetic.json   the generation config and each item's colour and shape (the planted rule, for checks)

Build it with `python -m datasets_builder build --format amazon2018 --interactions RAW_DIR/reviews.jsonl
--metadata RAW_DIR/metadata.jsonl --image-dir RAW_DIR/images --image-pattern '{item_id}.png' --out DATA_DIR`.
"""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .build import write_atomically

COLOR_FAMILIES = {
    "red": (205, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 70, 210),
    "yellow": (235, 205, 25),
    "purple": (135, 45, 175),
    "orange": (245, 125, 15),
    "cyan": (25, 195, 205),
    "pink": (245, 115, 185),
}
SHAPES = ("circle", "square", "triangle", "diamond")
ADJECTIVES = ("Classic", "Compact", "Deluxe", "Modern", "Portable", "Premium", "Simple", "Sturdy", "Travel", "Smart")
NOUNS = ("Mug", "Lamp", "Notebook", "Bottle", "Pillow", "Vase", "Clock", "Backpack", "Kettle", "Speaker", "Wallet")
START_TIME = 1_500_000_000  # 2017-07-14, seconds


@dataclasses.dataclass
class SyntheticConfig:
    """Sizes of the generated data set (defaults: large enough for a small model to learn the colour rule).

    Args:
        num_users / num_items / num_colors: users, items, and colour families (items are spread evenly over them).
        sessions_per_user: sessions per user, each at least two days after the previous one (so the default
            one-day `--session-gap` separates them); each session picks a colour family at random.
        min_session_length / max_session_length: items per session, distinct, all of the session's colour.
        off_color_rate: share of history items replaced by an item of any colour (noise; the target never is).
        image_size: side of the square PNG images in pixels.
    """

    num_users: int = 600
    num_items: int = 240
    num_colors: int = 6
    sessions_per_user: int = 2
    min_session_length: int = 10
    max_session_length: int = 14
    off_color_rate: float = 0.0
    image_size: int = 64
    seed: int = 0

    def __post_init__(self):
        per_color = self.num_items // max(self.num_colors, 1)
        checks = [
            (2 <= self.num_colors <= len(COLOR_FAMILIES), f"--num-colors must lie in 2..{len(COLOR_FAMILIES)}"),
            (self.num_users >= 1 and self.sessions_per_user >= 1, "--num-users and --sessions-per-user must be >= 1"),
            (2 <= self.min_session_length <= self.max_session_length,
             "--min-session-length must be >= 2 and <= --max-session-length"),
            (per_color >= self.max_session_length,
             f"--num-items / --num-colors = {per_color} items per colour must be >= --max-session-length "
             f"{self.max_session_length} (sessions hold distinct items): raise --num-items"),
            (0.0 <= self.off_color_rate < 1.0, "--off-color-rate must lie in [0, 1)"),
            (self.image_size >= 16, "--image-size must be >= 16 pixels"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def draw_item_image(color: tuple[int, int, int], shape: str, size: int, rng: np.random.Generator):
    """A PIL image: one filled `shape` in `color` (jittered) on a light neutral background, jittered size/place."""
    from PIL import Image, ImageDraw

    background = int(rng.integers(225, 251))
    image = Image.new("RGB", (size, size), (background,) * 3)
    fill = tuple(int(np.clip(channel + rng.integers(-20, 21), 0, 255)) for channel in color)
    radius = size * rng.uniform(0.32, 0.45)
    cx, cy = size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.08, 0.08) * size
    draw = ImageDraw.Draw(image)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=fill)
    return image


def generate_synthetic_dataset(out_dir: str | os.PathLike, config: SyntheticConfig | None = None) -> dict:
    """Write the synthetic raw files to `out_dir` (atomically; skipped when it already holds this config).

    Returns the contents of `synthetic.json`.
    """
    config = config or SyntheticConfig()
    out_dir = Path(out_dir)
    record_path = out_dir / "synthetic.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("config") == dataclasses.asdict(config) and (out_dir / "images").is_dir():
            return record
    rng = np.random.default_rng(config.seed)
    colors = list(COLOR_FAMILIES)[: config.num_colors]

    # items: colours spread evenly, ids and titles independent of colour
    item_colors = rng.permutation(np.arange(config.num_items) % config.num_colors)
    numbers = rng.choice(10_000, size=config.num_items, replace=False)
    items, asins = [], set()
    for index in range(config.num_items):
        asin = ""
        while not asin or asin in asins:  # ASIN-like: "B0" + 8 characters
            asin = "B0" + "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"), size=8))
        asins.add(asin)
        title = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {numbers[index]:04d}"
        color, shape = colors[item_colors[index]], str(rng.choice(SHAPES))
        items.append({"asin": asin, "title": title, "color": color, "shape": shape})
    by_color = [np.flatnonzero(item_colors == c) for c in range(config.num_colors)]

    # users: sessions of one colour family each, items an hour or so apart, sessions days apart
    reviews = []
    for user in range(config.num_users):
        time = START_TIME + int(rng.integers(0, 365 * 86400))
        for _ in range(config.sessions_per_user):
            color = int(rng.integers(config.num_colors))
            length = int(rng.integers(config.min_session_length, config.max_session_length + 1))
            session = rng.choice(by_color[color], size=length, replace=False)
            for position in range(length - 1):  # noise in the history only; the target keeps the colour
                if rng.random() < config.off_color_rate:
                    session[position] = rng.integers(config.num_items)
            for item in session.tolist():
                reviews.append((items[item]["asin"], time, f"U{user:05d}"))
                time += int(rng.integers(600, 7200))
            time += int(rng.integers(2, 30)) * 86400
    reviews.sort()  # grouped by product, as the Amazon files are

    record = {
        "config": dataclasses.asdict(config),
        "interactions": len(reviews),
        "items": [{key: item[key] for key in ("asin", "title", "color", "shape")} for item in items],
    }

    def write(tmp: Path):
        (tmp / "images").mkdir()
        for item in tqdm(items, desc="drawing images", leave=False):
            image = draw_item_image(COLOR_FAMILIES[item["color"]], item["shape"], config.image_size, rng)
            image.save(tmp / "images" / f"{item['asin']}.png")
        with open(tmp / "reviews.jsonl", "w") as handle:
            for asin, time, user in reviews:
                line = {"reviewerID": user, "asin": asin, "unixReviewTime": time, "overall": 5.0}
                handle.write(json.dumps(line) + "\n")
        with open(tmp / "metadata.jsonl", "w") as handle:
            for item in items:
                url = f"https://example.invalid/images/{item['asin']}.png"
                line = {"asin": item["asin"], "title": item["title"], "imageURLHighRes": [url], "imageURL": [url],
                        "category": ["Synthetic", item["title"].split()[1]]}
                handle.write(json.dumps(line) + "\n")
        (tmp / "synthetic.json").write_text(json.dumps(record, indent=1) + "\n")

    write_atomically(out_dir, write, ["images", "reviews.jsonl", "metadata.jsonl"], marker="synthetic.json")
    return record
