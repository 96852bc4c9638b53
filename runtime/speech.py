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


def max_new_tokens(manifest: Manifest, prompt_length: int, requested: int | None) -> int:
    """New tokens after the prompt, as transformers bounds them.

    ``requested`` (``--max-new-tokens``) must fit the decoder with the prompt; without it the
    generation config's ``max_new_tokens`` (cut to fit) or its ``max_length`` applies, where
    transformers lets ``max_length`` grow by the prompt length (at most half the decoder).
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
        max_length = speech.max_length if speech.max_length is not None else 20
        initial = min(limit // 2 - 1, prompt_length)
        new = min(max_length + initial, limit) - prompt_length
    if new < 1:
        raise InputError(f"the model's decoder ({limit} tokens) has no room after the prompt")
    return new


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
