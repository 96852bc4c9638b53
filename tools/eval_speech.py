"""Evaluate a speech bundle with the shipped runtime: word error rate on held-out spoken numbers.

The held-out set is ``tools.speech_data.heldout_set`` (drawn from its own seed; training skips
its sources), read from ``--data DIR/heldout`` when given, else synthesized with espeak-ng.
Every utterance is transcribed by ``tandem.runtime`` (``Seq2Seq.transcribe`` with the
utterance's language given, greedy) — the code ``tandem transcribe`` runs — not by torch.

Scores, per language and overall: word error rate (words are the transcript split at spaces,
commas removed; German writes a number below a million as one word, so its WER is coarse),
character error rate, and exact match of the whole transcript. ``--card FILE`` writes them
as the model card's "Evaluation" section (replacing an earlier one).

    python tools/eval_speech.py --bundle build/speech/bundle [--data build/speech/data] \
        [--n 400] [--card build/speech/bundle/README.md] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tandem.runtime.seq2seq import Seq2Seq  # noqa: E402
from tools.speech_data import heldout_set, read_dataset  # noqa: E402
from tools.verbalizer_data import LANGUAGES  # noqa: E402

CARD_HEADING = "## Evaluation"


def words(text: str) -> list[str]:
    return text.replace(",", " ").split()


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


@dataclass
class Score:
    n: int = 0
    exact: int = 0
    word_errors: int = 0
    words: int = 0
    char_errors: int = 0
    chars: int = 0
    misses: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, lang: str, output: str, target: str) -> None:
        self.n += 1
        self.exact += output == target
        self.word_errors += edit_distance(words(output), words(target))
        self.words += len(words(target))
        self.char_errors += edit_distance(list(output), list(target))
        self.chars += len(target)
        if output != target:
            self.misses.append((lang, output, target))

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "wer": self.word_errors / max(1, self.words),
            "cer": self.char_errors / max(1, self.chars),
            "exact_match": self.exact / max(1, self.n),
        }


def evaluate(model: Seq2Seq, examples) -> dict[str, Score]:
    """Per-language scores (and ``all``) of (utterance, samples) pairs."""
    scores = {lang: Score() for lang in (*LANGUAGES, "all")}
    for utt, samples in examples:
        output = model.transcribe(samples, language=utt.lang).text or ""
        for key in (utt.lang, "all"):
            scores[key].add(utt.lang, output, utt.text)
    return scores


def card_section(name: str, scores: dict[str, Score], source: str) -> str:
    lines = [
        CARD_HEADING,
        "",
        f"`{name}` on {scores['all'].n} held-out utterances ({source}), transcribed by "
        "`tandem.runtime` with the language given, greedy.",
        "",
        "| language | n | WER | CER | exact match |",
        "|---|---:|---:|---:|---:|",
    ]
    for lang, score in scores.items():
        d = score.as_dict()
        lines.append(
            f"| {lang} | {d['n']} | {d['wer']:.2%} | {d['cer']:.2%} | {d['exact_match']:.2%} |"
        )
    return "\n".join(lines) + "\n"


def write_card(path: Path, section: str) -> None:
    """Replace the card's evaluation section (up to the next ``## ``), or append it."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Speech model\n"
    head, sep, rest = text.partition(CARD_HEADING)
    tail = ""
    if sep:
        after = rest.find("\n## ")
        tail = rest[after + 1 :] if after >= 0 else ""
    path.write_text(head.rstrip("\n") + "\n\n" + section + ("\n" + tail if tail else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, help="speech bundle directory")
    parser.add_argument("--data", type=Path, default=None, help="dataset with heldout/")
    parser.add_argument("--n", type=int, default=400, help="held-out utterances to score")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--card", type=Path, default=None, help="write the model card section")
    parser.add_argument("--misses", type=int, default=10, help="print up to this many misses")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    from tandem.runtime.options import SessionConfig

    model = Seq2Seq.load(args.bundle, SessionConfig(intra_op_threads=args.threads))
    if args.data is not None:
        examples = read_dataset(args.data / "heldout")[: args.n]
        source = f"{args.data / 'heldout'}"
    else:
        examples = heldout_set(args.n)
        source = "synthesized by tools/speech_data.py"
    start = time.monotonic()
    scores = evaluate(model, examples)
    elapsed = time.monotonic() - start
    section = card_section(model.manifest.name, scores, source)
    print(section, end="")
    print(f"{len(examples)} utterances in {elapsed:.1f} s")
    for lang, output, target in scores["all"].misses[: args.misses]:
        print(f"miss [{lang}] {output!r} (want {target!r})")
    if args.card is not None:
        write_card(args.card, section)
    if args.json:
        result = {k: s.as_dict() for k, s in scores.items()}
        print(json.dumps({"bundle": model.manifest.name, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
