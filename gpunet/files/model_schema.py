"""What a model file's metadata may hold: its JSON, read with bounds, then every field checked for type and range.

The one place that decides whether metadata is valid. ``gpunet.files.checkpoint`` reads every model file's
metadata through ``metadata_from_json``, so every command and ``gpunet.load`` get only metadata that passed:
a field of the wrong type, range, size or nesting is one line (a ModelFileError) naming the file and the field.
An optional field may be missing; a key this gpunet does not know is kept and read by nobody.

Bounds, before anything is parsed: the text's size (the caller's, ``checkpoint.METADATA_LIMIT``) and its
nesting depth (Python's json module recurses, one C stack frame a level). Then, field by field:

    format          "gpunet-model"                 format_version  1 (dense) or 2 (a stack of layers)
    layer_sizes     v1: 2 to MAX_LAYERS + 2 sizes  architecture    v2: a spec of at most MAX_ARCH_TEXT characters
    input_shape     v2: 1 or 3 sizes               outputs         v2: 1 to MAX_UNITS
    classes         one label an output            normalization   {scale > 0, offset}
    feature_names   one name an input              training        the run's settings, data and its SHA-256
    estimator       Classifier's parameters        history         one record an epoch (EPOCH)
    best_epoch      an epoch of the history        final_metrics   an EPOCH record
    stop_reason     a name (completed, diverged, ...)

A version 2 spec is parsed (at most MAX_LAYERS layers) and fitted to its input shape by the network's own code,
``checkpoint.stack_architecture``, which every reader calls.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

from gpunet.errors import ModelFileError, printable
from gpunet.nn.model import MAX_LAYERS, MAX_UNITS

FORMAT = "gpunet-model"
FORMAT_VERSION = 1  # the notes' dense network
STACK_FORMAT_VERSION = 2  # a stack of layers: the architecture is the spec
MAX_DEPTH = 8  # levels of nesting; gpunet writes 3 ({"history": [{...}]})
MAX_INPUT_SIDE = 100_000  # a version 2 model's input shape, per axis
MAX_SIZE = 2**31 - 1  # a layer's size, a count of features
MAX_WHOLE = 2**63 - 1  # epochs, seeds, batch sizes
MAX_TEXT = 4096  # characters of a text field: a data file's path, a version
MAX_NAME = 64  # characters of a name: an optimizer, a device, a stop reason
MAX_ARCH_TEXT = 32 * MAX_LAYERS  # characters of an architecture spec ("conv100000k28same," is 18)

MISSING = object()  # a required field's value, where it is absent


class Invalid(Exception):
    """A field that breaks its rule: where it is ("training.seed"), the value, and what it must be."""

    def __init__(self, where: str, value, must: str):
        super().__init__(where)
        self.where, self.value, self.must = where, value, must

    def message(self, name: str) -> str:
        return f"{name}: metadata field {self.where} is {described(self.value)}; it must be {self.must}"


def described(value) -> str:
    """A JSON value in a few words, in JSON's terms: what a message says a field holds."""
    if value is MISSING:
        return "missing"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**15 else f"a number of {len(str(abs(value)))} digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return f"the text '{printable(value, 40)}'" if len(value) <= 1000 else f"a text of {len(value):,} characters"
    if isinstance(value, list):
        return f"a list of {len(value):,} item{'' if len(value) == 1 else 's'}"
    return "an object" if isinstance(value, dict) else type(value).__name__


# --- rules: each says what it accepts (``must``) and checks a value at a place ------------------------


class Rule:
    """What one value may be. A rule defines ``accepts`` (yes or no) or ``check`` (which also says where inside
    the value it fails, for lists and objects); each of the two is written here from the other."""
    must = ""

    def accepts(self, value) -> bool:
        try:
            self.check(value, "")
        except Invalid:
            return False
        return True

    def check(self, value, where: str) -> None:
        if not self.accepts(value):
            raise Invalid(where, value, self.must)


@dataclass(frozen=True)
class Whole(Rule):
    low: int
    high: int

    @property
    def must(self):
        return f"a whole number from {self.low:,} to {self.high:,}"

    def accepts(self, value) -> bool:
        return type(value) is int and self.low <= value <= self.high  # type: JSON's true is no number


@dataclass(frozen=True)
class Number(Rule):
    low: float = -math.inf
    high: float = math.inf
    above_low: bool = False  # the low end excluded

    @property
    def must(self):
        low = f"above {self.low:g}" if self.above_low else f"at least {self.low:g}"
        if math.isinf(self.low):
            return "a finite number"
        return f"a number {low}" + ("" if math.isinf(self.high) else f" and at most {self.high:g}")

    def accepts(self, value) -> bool:
        if type(value) not in (int, float) or (type(value) is float and not math.isfinite(value)):
            return False  # (math.isfinite of a whole number of 400 digits overflows)
        return (value > self.low if self.above_low else value >= self.low) and value <= self.high


@dataclass(frozen=True)
class Text(Rule):
    longest: int
    pattern: str | None = None  # a regular expression the whole text matches
    kind: str = "text"

    @property
    def must(self):
        return f"{self.kind} of at most {self.longest:,} characters"

    def accepts(self, value) -> bool:
        return (isinstance(value, str) and len(value) <= self.longest
                and (self.pattern is None or re.fullmatch(self.pattern, value) is not None))


@dataclass(frozen=True)
class Exactly(Rule):
    values: tuple

    @property
    def must(self):
        return " or ".join(json.dumps(v) for v in self.values)

    def accepts(self, value) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)


@dataclass(frozen=True)
class OrNull(Rule):
    """null, or what ``rule`` accepts."""
    rule: Rule

    @property
    def must(self):
        return f"null or {self.rule.must}"

    def accepts(self, value) -> bool:
        return value is None or self.rule.accepts(value)

    def check(self, value, where: str) -> None:
        if value is not None:
            try:
                self.rule.check(value, where)
            except Invalid as invalid:
                raise Invalid(invalid.where, invalid.value, self.must if invalid.where == where else invalid.must)


@dataclass(frozen=True)
class Label(Rule):
    """A class label: a number, true/false, or a short text (scikit-learn takes any of them)."""
    must = f"a class label: a finite number, true, false or text of at most {MAX_TEXT:,} characters"

    def accepts(self, value) -> bool:
        return isinstance(value, bool) or Number().accepts(value) or Text(MAX_TEXT).accepts(value)


@dataclass(frozen=True)
class ListOf(Rule):
    item: Rule
    shortest: int = 0
    longest: int = MAX_SIZE
    lengths: tuple[int, ...] | None = None  # the lengths allowed, where only some are

    @property
    def must(self):
        if self.lengths:
            count = " of " + " or ".join(map(str, self.lengths)) + " items"
        elif self.shortest:
            count = f" of {self.shortest:,} to {self.longest:,} items"
        else:
            count = f" of at most {self.longest:,} items" if self.longest < MAX_SIZE else ""
        return f"a list{count}, each {self.item.must}"

    def check(self, value, where: str) -> None:
        if not (isinstance(value, list) and self.shortest <= len(value) <= self.longest
                and (self.lengths is None or len(value) in self.lengths)):
            raise Invalid(where, value, self.must)
        for index, item in enumerate(value):
            self.item.check(item, f"{where}[{index}]")


@dataclass(frozen=True)
class Record(Rule):
    """A JSON object: each known key's value checked by its rule; ``required`` keys present; ``others``, where
    given, checks the values of the keys it does not name (else they are kept unread)."""
    fields: dict = field(default_factory=dict)
    required: tuple[str, ...] = ()
    others: Rule | None = None
    must = "an object"

    def check(self, value, where: str) -> None:
        if not isinstance(value, dict):
            raise Invalid(where or "(the whole)", value, "a JSON object")
        prefix = f"{where}." if where else ""
        for key in self.required:
            if key not in value:
                raise Invalid(prefix + key, MISSING, self.fields[key].must)
        for key, item in value.items():
            rule = self.fields.get(key, self.others)
            if rule is not None:
                rule.check(item, prefix + printable(key, 40))


@dataclass(frozen=True)
class Plain(Rule):
    """A Classifier parameter's value (get_params): null, true/false, a finite number, a text, or a list or an
    object of those (hidden=(16, 16)). What each parameter must be is the estimator's to check when it loads
    them (a ValueError there is one line too); its nesting is the metadata's, bounded before parsing."""
    must = (f"null, true, false, a finite number, text of at most {MAX_TEXT:,} characters, or a list or an object "
            "of those")

    def accepts(self, value) -> bool:
        if isinstance(value, (list, dict)):
            return all(map(self.accepts, value.values() if isinstance(value, dict) else value))
        return value is None or isinstance(value, bool) or Number().accepts(value) or Text(MAX_TEXT).accepts(value)


# --- the schema -----------------------------------------------------------------------------------

NAME = Text(MAX_NAME, r"[A-Za-z0-9_.+-]*", "a name (letters, digits, _ . + -)")
COUNT = Whole(0, MAX_WHOLE)
# An epoch's record (history, final_metrics): what ``training.loop.EpochMetrics`` holds; only the epoch is needed.
EPOCH = Record({
    "epoch": Whole(1, MAX_WHOLE),
    "lr": Number(0),
    "train_loss": Number(0),
    "train_accuracy": Number(0, 1),
    "val_loss": OrNull(Number(0)),
    "val_accuracy": OrNull(Number(0, 1)),
    "seconds": Number(0),
}, required=("epoch",))
# The run's settings (``TrainConfig.as_dict``) and where its data came from. Names (an optimizer, a schedule)
# are held to a name's form only: a newer gpunet's choices still load; ``gpunet.load`` refuses what it cannot use.
TRAINING = Record({
    "hidden": ListOf(Whole(1, MAX_UNITS), longest=MAX_LAYERS),
    "arch": OrNull(Text(MAX_ARCH_TEXT)),
    "epochs": Whole(1, MAX_WHOLE),
    "batch_size": COUNT,
    "lr": Number(0, above_low=True),
    "weight_decay": Number(0),
    "patience": OrNull(Whole(1, MAX_WHOLE)),
    "seed": COUNT,
    "split_seed": COUNT,  # absent in models from before --split-seed: their split's seed is ``seed`` (split_seed())
    "val_size": COUNT,
    "optimizer": NAME,
    "schedule": NAME,
    "warmup": Number(0),  # absent in models from before --warmup: their cosine schedule warmed up for 1 epoch
    "init": NAME,
    "dtype": NAME,
    "data": Text(MAX_TEXT),
    "data_sha256": Text(64, r"[0-9a-f]{64}", "64 hexadecimal digits (a SHA-256)"),
    "device": NAME,
})
TOP = Record({
    "format": Exactly((FORMAT,)),
    "format_version": Exactly((FORMAT_VERSION, STACK_FORMAT_VERSION)),
    "gpunet_version": Text(MAX_NAME),
    "layer_sizes": ListOf(Whole(1, MAX_SIZE), shortest=2, longest=MAX_LAYERS + 2),
    "architecture": Text(MAX_ARCH_TEXT),
    "input_shape": ListOf(Whole(1, MAX_INPUT_SIDE), lengths=(1, 3)),
    "outputs": Whole(1, MAX_UNITS),
    "classes": ListOf(Label(), shortest=1, longest=MAX_UNITS),
    "normalization": Record({"scale": Number(0, above_low=True), "offset": Number()}),
    "feature_names": OrNull(ListOf(Text(MAX_TEXT))),
    "training": TRAINING,
    "estimator": Record(others=Plain()),
    "history": ListOf(EPOCH),
    "best_epoch": OrNull(Whole(1, MAX_WHOLE)),
    "stop_reason": NAME,
    "final_metrics": OrNull(EPOCH),
})
REQUIRED = {FORMAT_VERSION: ("layer_sizes",), STACK_FORMAT_VERSION: ("architecture", "input_shape", "outputs")}


def split_seed(training: dict):
    """The seed of the shuffle that chose a training run's validation digits: ``training.split_seed``, or
    ``training.seed`` in models written before the two were apart (None where neither is recorded)."""
    return training.get("split_seed", training.get("seed"))


def metadata_from_json(text: str, name: str) -> dict:
    """The metadata a model file's JSON text holds, every field checked (see the module's docstring).

    ModelFileError naming ``name`` (the file) and what is wrong: not JSON, nested too deeply, not a gpunet
    model, a version this gpunet does not read, or the first field that breaks its rule."""
    meta = marked_json(text, name, "metadata", "gpunet model", FORMAT, ModelFileError)
    version = meta.get("format_version")
    if not Exactly((FORMAT_VERSION, STACK_FORMAT_VERSION)).accepts(version):
        raise ModelFileError(f"{name}: model format version {described(version)} is not supported "
                             f"(this gpunet reads versions {FORMAT_VERSION} and {STACK_FORMAT_VERSION})")
    try:
        Record(TOP.fields, REQUIRED[version]).check(meta, "")
        check_agreement(meta, version)
    except Invalid as invalid:
        raise ModelFileError(invalid.message(name)) from None
    return meta


def marked_json(text: str, name: str, member: str, kind: str, marker: str, error) -> dict:
    """The JSON object ``text`` (the file ``name``'s ``member``), nested at most MAX_DEPTH deep (``json`` recurses)
    and carrying ``"format": marker``; else ``error`` with one line saying which of these it is not. The fields
    are the caller's to check."""
    if (depth := nesting_depth(text)) > MAX_DEPTH:
        raise error(f"{name}: {member} is nested {depth:,} levels deep; {kind} files hold at most {MAX_DEPTH}")
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        raise error(f"{name}: {member} is not valid JSON") from None
    if not isinstance(value, dict) or value.get("format") != marker:
        raise error(f"{name}: not a {kind} (format is not {marker!r})")
    return value


def check_agreement(meta: dict, version: int) -> None:
    """The fields that must agree with one another: one class an output, one feature name an input, the best
    epoch one of the history's. (Whether a version 2 spec fits its input shape is the network's to say:
    ``checkpoint.stack_architecture``.)"""
    if version == STACK_FORMAT_VERSION:
        inputs, outputs = math.prod(meta["input_shape"]), meta["outputs"]
    else:
        inputs, outputs = meta["layer_sizes"][0], meta["layer_sizes"][-1]
    if "classes" in meta and len(meta["classes"]) != outputs:
        raise Invalid("classes", meta["classes"], f"one label for each of the network's {outputs:,} outputs")
    names = meta.get("feature_names")
    if names is not None and len(names) != inputs:
        raise Invalid("feature_names", names, f"null or one name for each of the network's {inputs:,} inputs")
    best, history = meta.get("best_epoch"), meta.get("history")
    if best is not None and history is not None and best > len(history):
        raise Invalid("best_epoch", best, f"an epoch of the history (1 to {len(history):,}), or null")


# Each byte's step in nesting depth: +1 opens an array or object, -1 closes one, 0 anything else.
_DEPTH_STEPS = np.zeros(256, np.int8)
_DEPTH_STEPS[[ord("["), ord("{")]] = 1
_DEPTH_STEPS[[ord("]"), ord("}")]] = -1


def nesting_depth(text: str) -> int:
    """How deep the JSON text's arrays and objects nest (0 for a bare value), found without parsing it.

    Brackets inside strings do not count: a quote opens or closes a string unless an odd run of backslashes
    escapes it. Vectorized over the text's UTF-8 bytes (no byte of a multi-byte character is ASCII), so a
    16 MiB metadata costs well under a second. In text that is not JSON the count may be off; json.loads, which
    then refuses it, is only reached when the count is small."""
    codes = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)
    steps = _DEPTH_STEPS[codes]
    quotes = np.flatnonzero(codes == ord('"'))
    if quotes.size:
        if (codes == ord("\\")).any():
            plain = np.flatnonzero(codes != ord("\\"))  # a quote is plain too: the search below finds it
            before = plain[np.searchsorted(plain, quotes) - 1]  # the last byte before it that is no backslash
            escaped = ((quotes - before) % 2 == 0) & (quotes != plain[0])  # an odd run of backslashes between
            quotes = quotes[~escaped]
        toggles = np.zeros(len(codes), np.uint8)
        toggles[quotes] = 1
        inside = np.cumsum(toggles, dtype=np.uint8) & 1  # 1 from an opening quote up to its closing one (the
        steps[inside == 1] = 0  # sum wraps at 256: its parity stays)
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))
