"""Word-level tokenizers: the demo models' own, and the builder behind it.

A word-level tokenizer gives each word of a closed vocabulary one id (``tokenizers.WordLevel``
wrapped in a ``PreTrainedTokenizerFast``), so that a prompt's length in tokens is its number of
words. The demo models are trained on such a vocabulary (:func:`build_tokenizer`); random-weight
checkpoints in the Hub layout, whose prompts are made of placeholder words (``w5 w17 ...``), use
:func:`word_level_tokenizer` directly with their family's special tokens at the ids their
configs name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from . import task

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
#: The tokenizer attributes of the four special tokens, in the demo vocabulary's order (ids 0-3).
ROLES = {"pad_token": PAD, "unk_token": UNK, "bos_token": BOS, "eos_token": EOS}


def word_level_tokenizer(
    vocabulary: Sequence[str] | Mapping[str, int],
    *,
    roles: Mapping[str, str] = ROLES,
    media: Mapping[str, str] | None = None,
    specials: Sequence[str] | None = None,
    plain: Sequence[str] = (),
    lowercase: bool = False,
    punctuation: bool = False,
    **options,
):
    """A ``PreTrainedTokenizerFast`` mapping each word of ``vocabulary`` to its id.

    Parameters
    ----------
    vocabulary : sequence of str, or mapping of str to int
        Every token, each at its index, or each with its id (ids may leave gaps, e.g. to put a
        family's special tokens at the ids its config names). Holds the special tokens too.
    roles : mapping of str to str
        The tokenizer's role tokens (``pad_token``, ``unk_token``, ``bos_token``,
        ``eos_token``); ``unk_token`` is required (every word outside the vocabulary).
    media : mapping of str to str, optional
        Further named tokens a processor reads from its tokenizer (``image_token``,
        ``video_token``, ``boi_token``, ...).
    specials : sequence of str, optional
        Tokens matched whole before the text is split, and marked special (skipped when
        decoding); default: the values of ``media``.
    plain : sequence of str
        Tokens matched whole before the text is split but not special (Gemma 3's newlines).
    lowercase : bool
        Lower-case the text first.
    punctuation : bool
        Split at whitespace and between words and punctuation (``Whitespace``); default: at
        whitespace only (``WhitespaceSplit``), so a word may hold ``<``, ``|`` or ``_``.
    **options
        Further ``PreTrainedTokenizerFast`` arguments (``model_max_length``, ...).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    if "unk_token" not in roles:
        raise ValueError(f"roles must name an unk_token, got {dict(roles)}")
    media = dict(media or {})
    if not isinstance(vocabulary, Mapping):
        vocabulary = {token: index for index, token in enumerate(vocabulary)}
    core = Tokenizer(WordLevel(dict(vocabulary), unk_token=roles["unk_token"]))
    if lowercase:
        core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = (
        pre_tokenizers.Whitespace() if punctuation else pre_tokenizers.WhitespaceSplit()
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, **roles, extra_special_tokens=media, **options
    )
    if plain:
        tokenizer.add_tokens(list(plain))
    specials = list(media.values()) if specials is None else list(specials)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer


def build_tokenizer(words: list[str] | None = None, media: dict[str, str] | None = None):
    """The demo models' tokenizer: word-level and lower-cased, punctuation split from words, over
    ``words`` (default :func:`task.vocabulary`) after the four special tokens (:data:`ROLES`)
    and the placeholders ``media`` names (default ``{"image_token": "<image>"}``); pads on the
    left, as ``generate`` needs."""
    media = media or {"image_token": IMAGE}
    vocabulary = [*ROLES.values(), *media.values(), *(words or task.vocabulary())]
    tokenizer = word_level_tokenizer(
        vocabulary, media=media, lowercase=True, punctuation=True, model_max_length=512
    )
    tokenizer.padding_side = "left"
    return tokenizer
