"""Whisper's decoding rules: the forced prompt, the default length, the ids as transformers gives them.

Every rule here restates what transformers' ``WhisperForConditionalGeneration.generate`` does
for short-form, greedy, no-timestamps decoding (read from its ``_retrieve_init_tokens`` and
``_set_max_new_tokens_and_length``), because "our ids equal transformers' ids" is the contract a
user checks. The rules read only the manifest, so the device and the cloud agree on them.
"""

from __future__ import annotations

from tandem.errors import InputError
from tandem.runtime.manifest import Manifest, SpeechPrompt

TASKS = ("transcribe", "translate")


def _speech(manifest: Manifest) -> SpeechPrompt:
    if manifest.speech is None:
        raise InputError(f"bundle {manifest.name!r} is not a speech model")
    return manifest.speech


def language_token(manifest: Manifest, language: str | None) -> int | None:
    """The token of a language code (``en``, or ``<|en|>``); None for None."""
    if language is None:
        return None
    speech = _speech(manifest)
    code = language.strip().lower()
    if code.startswith("<|") and code.endswith("|>"):
        code = code[2:-2]
    if not speech.multilingual:
        if code == "en":
            return None  # an English-only model has no language token: English is implied
        raise InputError(
            f"bundle {manifest.name!r} is English-only; --language {language!r} is not"
        )
    if code not in manifest.languages:
        known = ", ".join(sorted(manifest.languages)) or "none"
        raise InputError(f"unknown language {language!r}; this model knows: {known}")
    return manifest.languages[code]


def build_prompt(manifest: Manifest, language: int | None, task: str | None) -> list[int]:
    """Decoder prompt, start of transcript first: ``[sot, lang, task, notimestamps]``.

    ``language`` is a language token (given, or detected by the caller) or None. As in
    transformers, the legacy ``forced_decoder_ids`` only count when neither language nor task is
    given, a language token replaces the one at position 1, a given language implies the
    ``transcribe`` task, and ``<|notimestamps|>`` ends the prompt.
    """
    speech = _speech(manifest)
    if task is not None and task not in TASKS:
        raise InputError(f"task must be one of {list(TASKS)}, got {task!r}")
    if task is not None and not speech.task_tokens:
        task = None  # an English-only model transcribes; it has no task token
    prompt: list[int | None] = [speech.start_of_transcript]
    if language is None and task is None:
        forced = [list(p) for p in speech.forced_decoder_ids]
        position = 1
        while forced and forced[0][0] == position:
            prompt.append(forced.pop(0)[1])
            position += 1
    if language is not None:
        if len(prompt) > 1:
            prompt[1] = language
        else:
            prompt.append(language)
    if task is not None:
        if task not in speech.task_tokens:
            raise InputError(f"bundle {manifest.name!r} has no {task!r} task token")
        prompt.append(speech.task_tokens[task])
    elif (
        language is not None
        and "transcribe" in speech.task_tokens
        and not any(t in prompt for t in speech.task_tokens.values())
    ):
        prompt.append(speech.task_tokens["transcribe"])
    if speech.no_timestamps is not None and prompt[-1] != speech.no_timestamps:
        prompt.append(speech.no_timestamps)
    return [t for t in prompt if t is not None]


def window_prompt(manifest: Manifest, language: int | None) -> tuple[int, ...]:
    """The forced prompt of one window after the start of transcript, as ``Seq2Seq`` decodes
    it: the language token (multilingual models), ``transcribe``, ``<|notimestamps|>``."""
    speech = _speech(manifest)
    task = "transcribe" if speech.multilingual else None
    return tuple(build_prompt(manifest, language, task)[1:])


def prompts(manifest: Manifest) -> dict[int, tuple[int, ...]]:
    """Every window prompt this model can be decoded with, by its first token.

    The first token tells them apart (the language token of a multilingual model; an
    English-only model has one prompt), so a request that carries only a forced first token
    says which prompt it means: that is how the cloud and the edge's stream check derive the
    whole prompt from a ``DecodeRequest`` (see docs/speech.md).
    """
    speech = _speech(manifest)
    languages = list(manifest.languages.values()) if speech.multilingual else []
    out: dict[int, tuple[int, ...]] = {}
    for language in languages or [None]:
        prompt = window_prompt(manifest, language)
        if prompt:
            out.setdefault(prompt[0], prompt)
    return out


def begin_index(manifest: Manifest) -> int:
    """Length of the prompt (start token included): where ``begin_suppress_tokens`` apply.

    It does not depend on which language is chosen, only on whether the model has language and
    task tokens, so the decoding engine reads it from the manifest alone.
    """
    speech = _speech(manifest)
    if speech.multilingual and manifest.languages:
        language = next(iter(manifest.languages.values()))
        return len(build_prompt(manifest, language, "transcribe"))
    return len(build_prompt(manifest, None, None))


def max_new_tokens(
    manifest: Manifest, prompt_length: int, requested: int | None, max_length: int | None = None
) -> int:
    """New tokens after the prompt for one decoding run, as transformers bounds them.

    ``requested`` (``--max-new-tokens``) must fit the decoder with the prompt; without it the
    generation config's ``max_new_tokens`` (cut to fit) applies, or else ``max_length`` — the
    current one (see ``grown_max_length``), the generation config's by default.
    """
    speech = _speech(manifest)
    limit = manifest.dims.max_target_length
    if requested is not None:
        if requested < 1 or requested + prompt_length > limit:
            raise InputError(
                f"max_new_tokens must be in [1, {limit - prompt_length}] (the decoder holds "
                f"{limit} tokens, {prompt_length} of them the prompt), got {requested}"
            )
        return requested
    if speech.max_new_tokens is not None:
        new = min(speech.max_new_tokens, limit - prompt_length)
    else:
        if max_length is None:
            max_length = speech.max_length if speech.max_length is not None else 20
        new = grown_max_length(manifest, prompt_length, max_length) - prompt_length
    if new < 1:
        raise InputError(f"the model's decoder ({limit} tokens) has no room after the prompt")
    return new


def grown_max_length(manifest: Manifest, prompt_length: int, max_length: int) -> int:
    """transformers' ``max_length`` for a decoding run: the previous one plus the prompt (at
    most half the decoder), capped by the decoder. It grows again with every run of one input
    (its generation config is updated in place), and so does ours."""
    limit = manifest.dims.max_target_length
    return min(max_length + min(limit // 2 - 1, prompt_length), limit)


def timestamp_begin(manifest: Manifest) -> int | None:
    """The first timestamp token (``<|0.00|>``), right after ``<|notimestamps|>``."""
    speech = _speech(manifest)
    return None if speech.no_timestamps is None else speech.no_timestamps + 1


def split_segments(
    tokens: list[int], first_timestamp: int | None, frames: int, stride: int
) -> tuple[list[int], int]:
    """(tokens kept, feature frames consumed) of one decoding run, as transformers splits it.

    Even without timestamps, transformers reads generated timestamp tokens as segment ends:
    when two follow each other, tokens after the last such pair are dropped (unless the run
    ends on a single timestamp) and decoding resumes from that timestamp's frame, in a new run
    on the rest of the window. Real models never emit them with ``<|notimestamps|>``; random
    ones do, and "identical ids" includes what transformers does then.
    """
    if first_timestamp is None:
        return list(tokens), frames
    is_ts = [t >= first_timestamp for t in tokens]
    single_ending = is_ts[-2:] == [False, True]
    ends = [i + 1 for i in range(len(is_ts) - 1) if is_ts[i] and is_ts[i + 1]]
    if not ends:
        return list(tokens), frames
    if single_ending:
        ends.append(len(tokens))
    else:
        ends[-1] += 1
    kept = list(tokens[: ends[-1]])
    if single_ending:
        return kept, frames
    last_timestamp = tokens[ends[-1] - 2] - first_timestamp
    return kept, last_timestamp * stride


def as_transformers(new: list[int], eos: int, pad: int) -> list[int]:
    """Generated ids as transformers' Whisper ``generate`` returns them: the final EOS dropped.

    Also its padding rule, restated exactly: if the last token is the pad token, as many tokens
    as there are pad tokens in the sequence are cut from the end (one fewer when pad is EOS).
    """
    out = list(new)
    if out and out[-1] == pad:
        count = sum(1 for t in out if t == pad) - (1 if pad == eos else 0)
        if count:
            out = out[:-count]
    if out and out[-1] == eos:
        out = out[:-1]
    return out
