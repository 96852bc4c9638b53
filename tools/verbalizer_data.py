"""Verbalizer data recipe: what the shipped number verbalizer reads, writes and is tested on.

The default model turns a few integers written in digits into words in a chosen language
(``"21 1000"`` with ``fr`` -> ``"vingt et un, mille"``). Everything the model sees is defined
here, as pure functions of a caller-owned RNG, so that training, the held-out evaluation and
the tests all agree on one format:

- a source line is 1 to 4 non-negative integers below one billion, in plain digits, separated
  by single spaces; magnitudes are log-uniform (the digit count is uniform, then the value is
  uniform among numbers with that many digits), so big and small numbers are equally common;
- its target is ``", ".join(num2words(n, lang=L))`` for one target language ``L``;
- the held-out set is drawn from its own seed, and training skips its source lines;
- log-uniform values almost never have whole zero groups (``1000000``, ``30000500``), which
  num2words words differently (``un million`` without ``cent``, ``eine Million`` with a
  capital), so training also draws such *round* numbers (``ROUND_SHARE``), and a second
  held-out set of them (``heldout_round_set``) measures that case apart.

The tokenizer is part of the recipe too: it decides how digits reach the model (one token per
digit, with a marker between groups of three so place value is explicit) and it must decode a
target back to the exact text, accents and punctuation included.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator

from num2words import num2words
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing

log = logging.getLogger(__name__)

LANGUAGES: tuple[str, ...] = ("en", "fr", "de", "es")
"""Target languages, in the order of their language-token ids."""

MAX_NUMBERS_PER_LINE = 4
MAX_DIGITS = 9
"""Numbers are 0 ... 999,999,999."""

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def language_token(lang: str) -> str:
    """M2M100-style name; exporters recognise ``__xx__`` tokens as target-language tokens."""
    return f"__{lang}__"


SPECIAL_TOKENS: tuple[str, ...] = (PAD, EOS, UNK, *(language_token(lang) for lang in LANGUAGES))
"""Fixed ids 0..6: the trainer assigns special tokens first, in this order."""

LANGUAGE_TOKEN_IDS: dict[str, int] = {lang: 3 + i for i, lang in enumerate(LANGUAGES)}

TRAIN_SEED = 20240611
TOKENIZER_SEED = 7
HELDOUT_SEED = 99_991
"""Distinct from the training and tokenizer seeds so the streams never coincide by construction."""

HELDOUT_ROUND_SEED = 77_773
"""Seed of the round-number held-out set; distinct from every other seed."""

HELDOUT_RESERVED = 2000
"""Training never sees the source lines of ``heldout_set(HELDOUT_RESERVED)`` nor of
``heldout_round_set(HELDOUT_RESERVED)``; any shorter held-out set is a prefix of one of them
and therefore unseen too."""

ROUND_SHARE = 0.2
"""Share of the training numbers with 4 or more digits that get whole zero groups
(``round_off``). Enough for the model to learn the cases, small enough that the log-uniform
numbers of the main held-out set still make up most of the stream."""

GROUP_MARK = "_"
"""Inserted between digit groups of three (``1234567`` -> ``1_234_567``) by the tokenizer's
normalizer. Errors of small models on this task are place-value errors; the marker states the
place value instead of leaving the model to count digits. It lives inside tokenizer.json, so
the raw input format stays plain digits."""

_GROUP_PATTERN = r"(?<=\d)(?=(?:\d{3})+(?!\d))"

_GERMAN_MORPHEMES = r"hundert|tausend|und"
"""German writes numbers below a million as one word (``sechshundertvierundfünfzigtausend``).
Left alone, BPE learns merges across these joints, so each rare compound becomes its own token;
splitting here keeps German tokens compositional like the other languages. Pre-tokenizer splits
insert nothing, so decoding stays exact."""


def sample_numbers(rng: random.Random) -> list[int]:
    """1-4 numbers with log-uniform magnitude: digit count uniform in 1..9, value uniform within."""
    count = rng.randint(1, MAX_NUMBERS_PER_LINE)
    numbers = []
    for _ in range(count):
        digits = rng.randint(1, MAX_DIGITS)
        low = 0 if digits == 1 else 10 ** (digits - 1)
        numbers.append(rng.randint(low, 10**digits - 1))
    return numbers


def round_off(n: int, rng: random.Random) -> int:
    """``n`` with a random non-empty subset of its lower three-digit groups set to zero
    (``45123789`` -> ``45000789``, ``45123000`` or ``45000000``); numbers below 1000 have no
    lower group and come back unchanged. The leading group is kept, so the digit count is."""
    lower = (len(str(n)) - 1) // 3
    if lower == 0:
        return n
    zero = [rng.random() < 0.5 for _ in range(lower)]
    if not any(zero):
        zero[rng.randrange(lower)] = True
    for group, cleared in enumerate(zero):
        if cleared:
            n -= (n // 10 ** (3 * group)) % 1000 * 10 ** (3 * group)
    return n


def sample_round_numbers(rng: random.Random) -> list[int]:
    """``sample_numbers`` with every number of 4 or more digits rounded off."""
    return [round_off(n, rng) for n in sample_numbers(rng)]


def sample_training_numbers(rng: random.Random) -> list[int]:
    """What training draws: ``sample_numbers``, each number rounded off with ``ROUND_SHARE``."""
    return [round_off(n, rng) if rng.random() < ROUND_SHARE else n for n in sample_numbers(rng)]


def source_text(numbers: Iterable[int]) -> str:
    return " ".join(str(n) for n in numbers)


def target_text(numbers: Iterable[int], lang: str) -> str:
    return ", ".join(num2words(n, lang=lang) for n in numbers)


def sample_example(
    rng: random.Random, draw: Callable[[random.Random], list[int]] = sample_numbers
) -> tuple[str, str, str]:
    """(source, lang, target) with the language uniform over ``LANGUAGES``; ``draw`` picks
    the numbers (training passes ``sample_training_numbers``)."""
    numbers = draw(rng)
    lang = rng.choice(LANGUAGES)
    return source_text(numbers), lang, target_text(numbers, lang)


def heldout_set(n: int, seed: int = HELDOUT_SEED) -> list[tuple[str, str, str]]:
    """Deterministic held-out (source, lang, target) triples with distinct sources.

    Languages go round-robin so every language gets the same share; a shorter set is a prefix
    of a longer one, which lets quick evaluations reuse the reserved set.
    """
    return _heldout(n, seed, sample_numbers)


def heldout_round_set(n: int, seed: int = HELDOUT_ROUND_SEED) -> list[tuple[str, str, str]]:
    """Like ``heldout_set``, with every number of 4 or more digits rounded off."""
    return _heldout(n, seed, sample_round_numbers)


def _heldout(
    n: int, seed: int, draw: Callable[[random.Random], list[int]]
) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[str, str, str]] = []
    while len(out) < n:
        numbers = draw(rng)
        source = source_text(numbers)
        if source in seen:
            continue
        seen.add(source)
        lang = LANGUAGES[len(out) % len(LANGUAGES)]
        out.append((source, lang, target_text(numbers, lang)))
    return out


def reserved_sources() -> frozenset[str]:
    """Source lines that training must skip: both held-out sets."""
    held = heldout_set(HELDOUT_RESERVED) + heldout_round_set(HELDOUT_RESERVED)
    return frozenset(source for source, _, _ in held)


def training_examples(
    rng: random.Random, exclude: frozenset[str] | set[str]
) -> Iterator[tuple[str, str, str]]:
    """Endless training stream; skipping ``exclude`` keeps the held-out sets unseen."""
    while True:
        example = sample_example(rng, sample_training_numbers)
        if example[0] not in exclude:
            yield example


def _alphabet() -> list[str]:
    """Every character num2words uses for these languages, so no target ever maps to <unk>.

    Scanning 0..999 and each scale word covers all letters: larger numbers only combine these.
    """
    chars: set[str] = set("0123456789 ," + GROUP_MARK)
    values = [*range(1000), 1000, 2000, 10**6, 2 * 10**6, 10**9 - 1, 101_001, 21_021_021]
    for lang in LANGUAGES:
        for value in values:
            chars.update(num2words(value, lang=lang))
    chars.discard(" ")
    return sorted(chars)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> Tokenizer:
    """Train the shared source/target BPE tokenizer.

    - Normalizer: only inserts ``GROUP_MARK`` between digit groups; targets have no digits and
      pass unchanged, so decoding a target is exact.
    - Pre-tokenizer: Metaspace (spaces become a visible ``▁`` prefix) then one piece per digit,
      so every digit is its own token and BPE merges only inside words; German compounds are
      split at ``hundert``/``tausend``/``und``.
    - Decoder: Metaspace, the exact inverse for text without digits.
    - Post-processor: appends ``</s>``; the runtime encodes sources with special tokens on.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Replace(Regex(_GROUP_PATTERN), GROUP_MARK)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split(Regex(_GERMAN_MORPHEMES), behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=[*_alphabet(), "▁"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for token_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != token_id:
            raise RuntimeError(f"special token {token} got id {tokenizer.token_to_id(token)}")
    tokenizer.post_processor = TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, EOS_ID)]
    )
    return tokenizer


def tokenizer_corpus(n_examples: int, seed: int = TOKENIZER_SEED) -> list[str]:
    """Source and target texts of every language, from the training distribution."""
    rng = random.Random(seed)
    texts: list[str] = []
    for _ in range(n_examples):
        numbers = sample_numbers(rng)
        texts.append(source_text(numbers))
        texts.extend(target_text(numbers, lang) for lang in LANGUAGES)
    return texts
