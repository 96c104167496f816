"""Streaming readers for Amazon Reviews 2018, Amazon Reviews 2023 and RecBole atomic files.

Interactions are read line by line into integer codes (`InteractionLog`), so memory grows with the number of
interactions (24 bytes each) and of distinct users/items, never with the file size. Item metadata is read afterwards
and kept only for the items the interactions name.

Bad input: a malformed line raises `ValueError("file:line: reason")`, or with `skip_bad_lines=True` is skipped and
counted. A line without a required field is a bad line that names the field; a RecBole header without a required
column is always an error, and so is a truncated or corrupt `.gz` file. Bytes that are not UTF-8 are replaced (U+FFFD)
and the lines holding them counted; later metadata rows of an item already read are dropped and counted.
"""

import ast
import gzip
import html
import json
import logging
import os
import re
import string
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

FORMATS = ("amazon2018", "amazon2023", "recbole")
# (user, item, timestamp) keys of the review files; RecBole names its columns in the header (see `read_interactions`)
AMAZON_INTERACTION_FIELDS = {
    "amazon2018": ("reviewerID", "asin", "unixReviewTime"),
    "amazon2023": ("user_id", "parent_asin", "timestamp"),
}
AMAZON_ITEM_ID_FIELD = {"amazon2018": "asin", "amazon2023": "parent_asin"}
DEFAULT_TIMESTAMP_UNIT = {"amazon2018": "s", "amazon2023": "ms", "recbole": "s"}
RECBOLE_TITLE_FIELDS = ("title", "movie_title", "item_name", "name")
_UNITS_PER_SECOND = {"s": 1.0, "ms": 1000.0}
_PROGRESS_EVERY = 8192  # lines between progress-bar updates


class BadLineError(ValueError):
    """A malformed input line; the message starts with `file:line:`."""


@dataclass
class InteractionLog:
    """Interactions as integer codes in file order.

    Attributes:
        user_ids / item_ids: original id of each code (codes number ids in order of first appearance).
        users / items: `int64 [n]` codes; timestamps: `float64 [n]` seconds.
        lines: data lines read; bad_lines: lines skipped with `skip_bad_lines`; undecodable_lines: lines holding
            bytes that are not UTF-8 (kept, with the bytes replaced).
    """

    user_ids: list[str]
    item_ids: list[str]
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    lines: int = 0
    bad_lines: int = 0
    undecodable_lines: int = 0


@dataclass
class ItemRecord:
    """One item's metadata: its title, the extra text fields asked for, and its first image URL ("" if none)."""

    title: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    image_url: str = ""


def iter_lines(path: str, desc: str, counts: dict | None = None) -> Iterator[tuple[int, str]]:
    """Yield `(line_number, text)` of a plain or gzip UTF-8 file, with a progress bar in bytes.

    Bytes that are not UTF-8 are replaced (U+FFFD); the lines holding them are counted in
    `counts["undecodable_lines"]` and logged. A truncated or corrupt gzip file raises a `ValueError` naming it.
    """
    counts = {} if counts is None else counts
    counts.setdefault("undecodable_lines", 0)
    first_undecodable = None
    number = 0
    with open(path, "rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
        with tqdm(total=os.path.getsize(path), desc=desc, unit="B", unit_scale=True, leave=False) as bar:
            try:
                for number, line in enumerate(stream, start=1):
                    if number % _PROGRESS_EVERY == 0:
                        bar.update(raw.tell() - bar.n)
                    try:
                        text = line.decode("utf-8")
                    except UnicodeDecodeError:
                        text = line.decode("utf-8", errors="replace")
                        counts["undecodable_lines"] += 1
                        first_undecodable = first_undecodable or number
                    yield number, text.rstrip("\r\n")
            except (EOFError, zlib.error, gzip.BadGzipFile) as error:
                raise ValueError(
                    f"{path}: the gzip file is truncated or corrupt after line {number} ({type(error).__name__}: "
                    f"{error}). Download it again (`gzip -t {path}` checks a file); --skip-bad-lines cannot skip "
                    "this, the rest of the file is unreadable."
                ) from None
            bar.update(raw.tell() - bar.n)
    if counts["undecodable_lines"]:
        logger.warning(
            "%s: %d line(s) hold bytes that are not UTF-8 (first: line %d); they were replaced by U+FFFD and counted "
            "in stats.json's undecodable_lines.", path, counts["undecodable_lines"], first_undecodable,
        )


def parse_json_record(text: str) -> dict:
    """One JSON object per line; the 2018 metadata's python-literal lines (`{'asin': ...}`) are accepted too."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as json_error:
        try:
            record = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"not a JSON object ({json_error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    return record


class _LineErrors:
    """Raise or count bad lines (and log the first few skipped ones)."""

    def __init__(self, path: str, skip: bool):
        self.path, self.skip, self.count = path, skip, 0

    def __call__(self, number: int, reason: str):
        message = f"{self.path}:{number}: {reason}"
        if not self.skip:
            raise BadLineError(message + " (pass --skip-bad-lines to skip and count such lines)")
        self.count += 1
        if self.count <= 5:
            logger.warning("skipped bad line %s", message)


def _required(record: dict, key: str, fmt: str) -> object:
    value = record.get(key)
    if value is None or value == "":
        raise ValueError(f"missing required field {key!r} (is --format {fmt} right for this file?)")
    return value


def _recbole_header(path: str, header: str, required: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    """Column names of a RecBole header (`name:type`) and the column index of each required role."""
    names = [column.split(":", 1)[0].strip() for column in header.split("\t")]
    columns = {}
    for role, name in required.items():
        if name not in names:
            raise ValueError(
                f"{path}: required field {name!r} ({role}) is not in the header {names}; RecBole atomic files "
                f"start with a typed header such as 'user_id:token\\titem_id:token\\ttimestamp:float' "
                f"(name the column with --{role}-field)."
            )
        columns[role] = names.index(name)
    return names, columns


def read_interactions(
    path: str,
    fmt: str,
    skip_bad_lines: bool = False,
    timestamp_unit: str | None = None,
    user_field: str = "user_id",
    item_field: str = "item_id",
    time_field: str = "timestamp",
) -> InteractionLog:
    """Stream a review / `.inter` file into an `InteractionLog` (timestamps in seconds).

    Args:
        fmt: one of `FORMATS`. `user_field` / `item_field` / `time_field` name the RecBole columns.
        timestamp_unit: `s` or `ms`; default per format (Amazon 2023 uses milliseconds).
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; choose one of {list(FORMATS)}.")
    per_second = _UNITS_PER_SECOND[timestamp_unit or DEFAULT_TIMESTAMP_UNIT[fmt]]
    user_codes: dict[str, int] = {}
    item_codes: dict[str, int] = {}
    users, items, times = array("q"), array("q"), array("d")
    errors = _LineErrors(path, skip_bad_lines)
    lines = 0
    columns = None
    decoding = {}
    for number, text in iter_lines(path, desc=f"reading {os.path.basename(path)}", counts=decoding):
        if fmt == "recbole" and columns is None:
            if text.strip():
                names, columns = _recbole_header(
                    path, text, {"user": user_field, "item": item_field, "time": time_field}
                )
            continue
        if not text.strip():
            continue
        lines += 1
        try:
            if fmt == "recbole":
                values = text.split("\t")
                if len(values) != len(names):
                    raise ValueError(f"expected {len(names)} tab-separated columns ({names}), got {len(values)}")
                user, item, stamp = (values[columns[role]].strip() for role in ("user", "item", "time"))
                for role, value in (("user", user), ("item", item), ("time", stamp)):
                    if not value:
                        raise ValueError(f"empty required field {names[columns[role]]!r}")
            else:
                record = parse_json_record(text)
                user_key, item_key, time_key = AMAZON_INTERACTION_FIELDS[fmt]
                user, item, stamp = (_required(record, key, fmt) for key in (user_key, item_key, time_key))
                user, item = str(user), str(item)
            try:
                seconds = float(stamp) / per_second
            except (TypeError, ValueError):
                raise ValueError(f"timestamp {stamp!r} is not a number") from None
            if not np.isfinite(seconds):
                raise ValueError(f"timestamp {stamp!r} is not finite")
        except ValueError as error:
            errors(number, str(error))
            continue
        users.append(user_codes.setdefault(user, len(user_codes)))
        items.append(item_codes.setdefault(item, len(item_codes)))
        times.append(seconds)
    if fmt == "recbole" and columns is None:
        raise ValueError(f"{path}: the file is empty; a RecBole .inter file starts with a typed header line.")
    return InteractionLog(
        user_ids=list(user_codes),
        item_ids=list(item_codes),
        users=np.frombuffer(users, dtype=np.int64).copy(),
        items=np.frombuffer(items, dtype=np.int64).copy(),
        timestamps=np.frombuffer(times, dtype=np.float64).copy(),
        lines=lines,
        bad_lines=errors.count,
        undecodable_lines=decoding["undecodable_lines"],
    )


def _clean_text(value) -> str:
    """Metadata value to one line of text: lists joined with ", ", HTML entities decoded, whitespace collapsed."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = ", ".join(_clean_text(part) for part in value if _clean_text(part))
    elif isinstance(value, dict):
        return ""
    return re.sub(r"\s+", " ", html.unescape(str(value))).strip()


def _first_image_url(record: dict, fmt: str) -> str:
    if fmt == "amazon2018":
        for key in ("imageURLHighRes", "imageURL"):
            urls = record.get(key) or []
            urls = [urls] if isinstance(urls, str) else urls
            if urls:
                return str(urls[0])
        return ""
    for image in record.get("images") or []:
        if isinstance(image, dict) and (image.get("large") or image.get("hi_res")):
            return str(image.get("large") or image.get("hi_res"))
    return ""


def read_item_metadata(
    path: str,
    fmt: str,
    wanted: set[str] | dict[str, int],
    text_fields: tuple[str, ...] = (),
    skip_bad_lines: bool = False,
    title_field: str | None = None,
    item_field: str = "item_id",
    counts: dict | None = None,
) -> tuple[dict[str, ItemRecord], int]:
    """Stream a metadata / `.item` file and keep the records of the `wanted` item ids (first record wins).

    Returns `(records, bad_lines_skipped)`. `text_fields` are the extra fields kept for the item text;
    `title_field` names the title column (default: `title`, or for RecBole the first of `RECBOLE_TITLE_FIELDS`).
    `counts`, when given, receives `duplicates_dropped` (later rows of a wanted item already read) and
    `undecodable_lines` (lines holding bytes that are not UTF-8).
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; choose one of {list(FORMATS)}.")
    records: dict[str, ItemRecord] = {}
    errors = _LineErrors(path, skip_bad_lines)
    names = None
    counts = {} if counts is None else counts
    counts.update(duplicates_dropped=0, undecodable_lines=0)
    for number, text in iter_lines(path, desc=f"reading {os.path.basename(path)}", counts=counts):
        if fmt == "recbole" and names is None:
            if not text.strip():
                continue
            names = [column.split(":", 1)[0].strip() for column in text.split("\t")]
            if title_field is None:
                title_field = next((name for name in RECBOLE_TITLE_FIELDS if name in names), None)
                if title_field is None:
                    raise ValueError(
                        f"{path}: no title column in the header {names} (looked for {list(RECBOLE_TITLE_FIELDS)}); "
                        "name it with --title-field."
                    )
            for name in (item_field, title_field, *text_fields):
                if name not in names:
                    raise ValueError(
                        f"{path}: required field {name!r} is not in the header {names}; fix --item-field, "
                        "--title-field or --text-fields."
                    )
            continue
        if not text.strip():
            continue
        try:
            if fmt == "recbole":
                values = text.split("\t")
                if len(values) != len(names):
                    raise ValueError(f"expected {len(names)} tab-separated columns ({names}), got {len(values)}")
                record = dict(zip(names, values))
                item = record[item_field].strip()
                if not item:
                    raise ValueError(f"empty required field {item_field!r}")
            else:
                record = parse_json_record(text)
                item = str(_required(record, AMAZON_ITEM_ID_FIELD[fmt], fmt))
        except ValueError as error:
            errors(number, str(error))
            continue
        if item not in wanted:
            continue
        if item in records:
            counts["duplicates_dropped"] += 1
            continue
        records[item] = ItemRecord(
            title=_clean_text(record.get(title_field or "title")),
            fields={name: _clean_text(record.get(name)) for name in text_fields},
            image_url="" if fmt == "recbole" else _first_image_url(record, fmt),
        )
    if counts["duplicates_dropped"]:
        logger.warning(
            "%s: %d later row(s) of an item already read were dropped (the first row wins); counted in stats.json's "
            "metadata_duplicates_dropped.", path, counts["duplicates_dropped"],
        )
    return records, errors.count


def template_fields(template: str) -> tuple[str, ...]:
    """Field names a `--text-template` uses, besides `title`."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    return tuple(dict.fromkeys(name for name in names if name != "title"))


def compose_item_text(record: ItemRecord | None, template: str | None = None) -> str:
    """The text the text encoder reads: the title plus the extra fields.

    Without a template: `"title; field: value; ..."` (empty parts left out). With one, e.g.
    `"{title} ({release_year}), {class}"`, every placeholder is filled and an item without a title gets "".
    """
    if record is None or not record.title:
        return ""
    if template is not None:
        return re.sub(r"\s+", " ", template.format(title=record.title, **record.fields)).strip()
    parts = [record.title] + [f"{name}: {value}" for name, value in record.fields.items() if value]
    return "; ".join(parts)
