"""A generated multimodal data set in the Amazon Reviews 2018 format, where the next item depends on its image only.

Every item is a PIL-drawn shape in a random colour; titles name neither ("Compact Kettle 0412"). Where each session
goes is set by shape alone, under one of two rules:

    target-shape   (default) sessions wander over the other shapes and end on an item of the first shape (a circle):
                   the next item is the one that looks like a circle. A model learns it from the target's image alone.
    session-shape  each session stays within one shape, so the target has the history's shape: a relational rule
                   (compare each candidate with the history). It is harder: a small backbone trained for minutes on
                   a CPU does not pick it up (README, Results).

Either way a model that sees the images can rank the pool (the target plus never-interacted items, mostly of other
shapes) far above chance, and one that reads only the titles cannot. Shape, not colour, is the planted property
because it is what an ImageNet encoder separates: on EfficientNet-Lite0 features, items of one shape have a centred
cosine similarity of about 0.7, against -0.2 across shapes, while two colour families differ by only 0.05.
Written to RAW_DIR:

    reviews.jsonl    reviewerID, asin, unixReviewTime, overall       (one line per interaction)
    metadata.jsonl   asin, title, imageURLHighRes, imageURL, category (one line per item)
    images/{asin}.png
    synthetic.json   the generation config and each item's shape and colour (the planted rule, for checks)

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
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
RULES = ("target-shape", "session-shape")
ADJECTIVES = ("Classic", "Compact", "Deluxe", "Modern", "Portable", "Premium", "Simple", "Sturdy", "Travel", "Smart")
NOUNS = ("Mug", "Lamp", "Notebook", "Bottle", "Pillow", "Vase", "Clock", "Backpack", "Kettle", "Speaker", "Wallet")
START_TIME = 1_500_000_000  # 2017-07-14, seconds


@dataclasses.dataclass
class SyntheticConfig:
    """The rule and sizes of the generated data set (defaults: the main job's vision check, configs/vision_check.yaml).

    Args:
        rule: "target-shape" or "session-shape" (module docstring).
        num_users / num_items / num_shapes: users, items, and shapes (items are spread evenly over them).
        sessions_per_user: sessions per user, each at least two days after the previous one (so the default
            one-day `--session-gap` separates them).
        min_session_length / max_session_length: items per session, distinct.
        off_shape_rate: share of history items replaced by an item of any shape (noise; the target never is).
        image_size: side of the square PNG images in pixels.
    """

    rule: str = "target-shape"
    num_users: int = 600
    num_items: int = 120
    num_shapes: int = 4
    sessions_per_user: int = 2
    min_session_length: int = 10
    max_session_length: int = 14
    off_shape_rate: float = 0.0
    image_size: int = 64
    seed: int = 0

    def __post_init__(self):
        per_shape = self.num_items // max(self.num_shapes, 1)
        # items a session's history draws from: one shape's, or (target-shape) all but the target shape's
        history_pool = per_shape if self.rule == "session-shape" else self.num_items - per_shape
        checks = [
            (self.rule in RULES, f"--rule must be one of {list(RULES)}"),
            (2 <= self.num_shapes <= len(SHAPES), f"--num-shapes must lie in 2..{len(SHAPES)}"),
            (self.num_users >= 1 and self.sessions_per_user >= 1, "--num-users and --sessions-per-user must be >= 1"),
            (2 <= self.min_session_length <= self.max_session_length,
             "--min-session-length must be >= 2 and <= --max-session-length"),
            (history_pool >= self.max_session_length,
             f"--rule {self.rule} draws sessions from {history_pool} items, fewer than --max-session-length "
             f"{self.max_session_length} (sessions hold distinct items): raise --num-items"),
            (0.0 <= self.off_shape_rate < 1.0, "--off-shape-rate must lie in [0, 1)"),
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
    elif shape == "diamond":
        draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=fill)
    elif shape == "cross":
        arm = radius / 3
        draw.rectangle((cx - radius, cy - arm, cx + radius, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - radius, cx + arm, cy + radius), fill=fill)
    else:  # ring
        draw.ellipse(box, outline=fill, width=max(2, round(radius / 3)))
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
    shapes = SHAPES[: config.num_shapes]

    # items: shapes spread evenly, colours at random; ids and titles independent of both
    item_shapes = rng.permutation(np.arange(config.num_items) % config.num_shapes)
    numbers = rng.choice(10_000, size=config.num_items, replace=False)
    items, asins = [], set()
    for index in range(config.num_items):
        asin = ""
        while not asin or asin in asins:  # ASIN-like: "B0" + 8 characters
            asin = "B0" + "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"), size=8))
        asins.add(asin)
        title = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {numbers[index]:04d}"
        shape, color = shapes[item_shapes[index]], str(rng.choice(list(COLOR_FAMILIES)))
        items.append({"asin": asin, "title": title, "shape": shape, "color": color})
    by_shape = [np.flatnonzero(item_shapes == k) for k in range(config.num_shapes)]

    # users: sessions of items an hour or so apart, sessions days apart
    other_shapes = np.flatnonzero(item_shapes != 0)
    reviews = []
    for user in range(config.num_users):
        time = START_TIME + int(rng.integers(0, 365 * 86400))
        for _ in range(config.sessions_per_user):
            length = int(rng.integers(config.min_session_length, config.max_session_length + 1))
            if config.rule == "session-shape":
                session = rng.choice(by_shape[int(rng.integers(config.num_shapes))], size=length, replace=False)
            else:
                session = np.append(rng.choice(other_shapes, size=length - 1, replace=False), rng.choice(by_shape[0]))
            for position in range(length - 1):  # noise in the history only; the target keeps its shape
                if rng.random() < config.off_shape_rate:
                    session[position] = rng.integers(config.num_items)
            for item in session.tolist():
                reviews.append((items[item]["asin"], time, f"U{user:05d}"))
                time += int(rng.integers(600, 7200))
            time += int(rng.integers(2, 30)) * 86400
    reviews.sort()  # grouped by product, as the Amazon files are

    record = {
        "config": dataclasses.asdict(config),
        "interactions": len(reviews),
        "items": [{key: item[key] for key in ("asin", "title", "shape", "color")} for item in items],
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


def build_vision_check_data(root: str | os.PathLike, num_users: int = 200, num_items: int = 120) -> Path:
    """The vision check's data set (tests/test_vision_check.py, scripts/vision_gate_sweep.py): target-shape data
    generated into ROOT/raw, built into ROOT/data (histories of 8, 10 extra pools per valid/test sequence) with real
    all-MiniLM-L6-v2 text and EfficientNet-Lite0 image features and no ID features. Returns ROOT/data."""
    from .build import BuildConfig, build_dataset
    from .features import compute_item_features

    raw, data = Path(root) / "raw", Path(root) / "data"
    generate_synthetic_dataset(raw, SyntheticConfig(num_users=num_users, num_items=num_items))
    build_dataset(BuildConfig(format="amazon2018", interactions=str(raw / "reviews.jsonl"),
                              metadata=str(raw / "metadata.jsonl"), image_dir=str(raw / "images"),
                              image_pattern="{item_id}.png", max_history=8, extra_pools=10), data)
    compute_item_features(data, text_encoder="all-MiniLM-L6-v2", vision_encoder="efficientnet-lite0", id_encoder="none")
    return data
