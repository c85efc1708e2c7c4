"""Prompt-injection detection: weighted rules over normalised text, for user input and tool output.

Pure, offline and fast (a 2 KB text takes well under a millisecond). The text is normalised first
(NFKC, invisible characters dropped, look-alike letters folded, accents stripped, lower case, whitespace
collapsed), split into words once, and each rule (`injection_rules`) is searched only when one of its
trigger words is present. A verdict's score combines the matched rules' weights as independent evidence:
``1 - prod(1 - weight)``.

Obfuscated copies are searched too, but only when the text shows the trick: leetspeak, letters spaced
out, words split by hyphens, base64 or hex blobs, reversed or ROT13 text, Unicode tag characters, and
quoted strings to be concatenated. A rule found only in such a copy adds a marker rule naming the trick.

Text that *describes* an attack (a security article quoting "ignore previous instructions") is not an
attack: a match that is quoted or given as an example, in a text that talks about attacks, counts at a
fifth of its weight.

Only the first ``max_chars`` characters are scanned (100,000 by default); the verdict says so
(``truncated``), and a caller that cannot accept an unscanned tail should refuse the text by size.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal

from tether.errors import ConfigurationError
from tether.policy.injection_rules import ANY_SOURCE, TOOL_ONLY, USER_ONLY, Rule, default_rules

__all__ = [
    "ANY_SOURCE",
    "DEFAULT_MAX_CHARS",
    "TOOL_ONLY",
    "USER_ONLY",
    "InjectionDetector",
    "InjectionVerdict",
    "Rule",
    "Source",
    "default_rules",
    "normalise",
    "words",
]

Source = Literal["user", "tool"]

DEFAULT_MAX_CHARS = 100_000
EXCERPT_MAX_CHARS = 200
# A quoted or exemplified match in a text about attacks counts this much of its weight.
DESCRIBED_FACTOR = 0.2


@dataclass(frozen=True, slots=True)
class InjectionVerdict:
    """What the detector found in one text: a score, the rules behind it and the span that matched most."""

    score: float  # 0..1
    rules: tuple[str, ...]  # every rule that matched, strongest first
    excerpt: str  # the strongest match, normalised, at most 200 characters
    threshold: float = 0.5
    truncated: bool = False  # only the first max_chars characters were scanned

    @property
    def is_injection(self) -> bool:
        return self.score >= self.threshold


# --- normalisation -------------------------------------------------------------------------------------

# One table for the non-ASCII path, applied after NFKD: drops format characters that render as nothing
# (zero-width space/joiners, word joiner, BOM, soft hyphen, bidi controls, variation selectors, Unicode tags)
# and combining marks (accents), folds Cyrillic and Greek letters that look Latin, and straightens quotes.
_INVISIBLE = [
    *(0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFEFF, 0xFFA0),
    *range(0x180B, 0x180F),
    *range(0x200B, 0x2010),
    *range(0x202A, 0x202F),
    *range(0x2060, 0x2070),
    *range(0xFE00, 0xFE10),
    *range(0xE0000, 0xE0080),
]
_COMBINING = [*range(0x0300, 0x0370), *range(0x1AB0, 0x1B00), *range(0x1DC0, 0x1E00), *range(0x20D0, 0x2100)]
_LOOKALIKE = "аеёіїјкмнорсстуухѕԁԛԝһӏАВЕКМНОРСТХУІЈЅαονρικτυεΑΒΕΖΗΙΚΜΝΟΡΤΥΧ‘’‚‛′“”„‟″«»"
_LATIN = "aeeiijkmhopcctyyxsdqwhlABEKMHOPCTXYIJSaovpiktueABEZHIKMNOPTYX" + "'" * 5 + '"' * 7
_DASHES = {"\u2014": " - ", "\u2013": " - ", "\u2212": "-", "\u2010": "-", "\u2011": "-"}
_FOLD = str.maketrans(
    {
        **dict.fromkeys(map(chr, _INVISIBLE + _COMBINING)),
        **dict(zip(_LOOKALIKE, _LATIN, strict=True)),
        **_DASHES,
    }
)
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def _fold(run: re.Match[str]) -> str:
    return run.group().translate(_FOLD)


# Runs of spaces, and any other horizontal whitespace; a lone space is left alone (most of them).
_HSPACE = re.compile(r"[^\S\n]{2,}|[^\S\n ]")
_ODD_SPACE = ("  ", "\t", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\u2028", "\u2029")
_NEWLINES = re.compile(r" ?\n\s*")


def normalise(text: str) -> str:
    """NFKD, invisible characters and accents dropped, look-alikes folded, lower case, spaces collapsed."""
    if not text.isascii():
        # translate() is slow on non-ASCII strings: fold only the non-ASCII runs.
        text = _NON_ASCII.sub(_fold, unicodedata.normalize("NFKD", text))
    text = text.lower()
    if any(odd in text for odd in _ODD_SPACE):
        text = _HSPACE.sub(" ", text)
    if "\n" in text:
        text = _NEWLINES.sub("\n", text)
    return text.strip()


# Every ASCII character that is not part of a word becomes a space; split() then gives the words.
_NOT_WORD = str.maketrans({c: " " for c in map(chr, range(128)) if not (c.isalnum() or c == "_")})
_MARKS = ("<|", "<!--", "![", "---", "===", "<", "[", "#", "@", "_")


def words(text: str) -> frozenset[str]:
    """The words of normalised text, and the marks some rules need (``<|``, ``[``, ``#``, ``---``, ``_``)."""
    # translate() is fast on ASCII only. What normalisation left non-ASCII (dashes, symbols, other scripts)
    # separates words: no trigger word has such characters.
    ascii_text = text if text.isascii() else _NON_ASCII.sub(" ", text)
    found = set(ascii_text.translate(_NOT_WORD).split())
    found.update(mark for mark in _MARKS if mark in text)
    # "opsbot", "jailbreakgpt": a name ending in bot or gpt counts as the word.
    for suffix in ("bot", "gpt"):
        if suffix in text:
            found.add(suffix)
    return frozenset(found)


# --- what a text that talks about attacks looks like -----------------------------------------------------

_DISCUSSION = re.compile(
    r"\b(?:prompt injections?|injection attacks?|jailbreak(?:s|ing)?|attackers?|adversar\w+|malicious|red "
    r"team"
    r"|owasp|llm01|payloads?|threat model|researchers?|phishing|defenders?|attack strings?|security advisory"
    r"|exploit\w*|detectors?|filters that)\b"
)
_DISCUSSION_WORDS = frozenset(
    {"prompt", "injection", "injections", "jailbreak", "jailbreaks", "jailbreaking", "attacker", "attackers"}
    | {"adversarial", "adversary", "adversaries", "malicious", "red", "owasp", "llm01", "payload", "payloads"}
    | {"threat", "researcher", "researchers", "phishing", "defender", "defenders", "attack", "security"}
    | {"exploit", "exploits", "exploited", "exploiting", "exploitation", "detector", "detectors", "filters"}
)
_MENTION_BEFORE = re.compile(
    r"(?:['\"]\s*|\b(?:like|such as|e\.g\.|for example|for instance|called|known as|phrases?|strings?|says?"
    r"|said|text|payloads?|attacks?|asking (?:the )?(?:model|assistant|ai|llm|bot)s? to|ask (?:the )?"
    r"(?:model|assistant|ai|llm|bot)s? to|instructing|tell (?:the )?(?:model|assistant)s? to|to get the \w+ "
    r"to"
    r"|attackers? \w+)\b[^.!?\n]{0,80})$"
)

# --- tricks that hide an instruction, each with a cheap test for whether the text shows it ----------------

_ZERO_WIDTH_IN_WORD = re.compile("[^\\W\\d_][\u200b-\u200d\u2060\ufeff]+[^\\W\\d_]")
_MIXED_SCRIPT = re.compile("[a-zA-Z][\u0400-\u04ff\u0370-\u03ff]|[\u0400-\u04ff\u0370-\u03ff][a-zA-Z]")
_LEET = str.maketrans("0134579@$|!", "oieastgasii")
# Starts on the digit so the regex engine can skip to candidates.
_LEET_HINT = re.compile(r"[0134579@$|](?<=[a-z][0134579@$|])(?=[a-z])|[0134579](?<=\b[0134579])(?=[a-z]{2})")
_SINGLE_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_SPACED_HINT = re.compile(r" [a-z0-9][ .\-_*/|+]{1,3}[a-z0-9][ .\-_*/|+]")
_SPACED_RUN = re.compile(r"(?<![a-z0-9])(?:[a-z0-9][ .\-_*/|+]{1,3}){3,}[a-z0-9](?![a-z0-9])")
_SPACED_SEPARATORS = re.compile(r"[ .\-_*/|+]")
_SQUASHED_ATTACK = re.compile(
    r"(?:ignore|disregard|forget|override|bypass)(?:all|any|every|the|your|of)*(?:previous|prior|above"
    r"|earlier"
    r"|preceding|system|original|initial)?(?:instructions?|prompts?|rules|directives|guidelines|commands)"
    r"|systemprompt|hiddenprompt|developermode|jailbreak|doanythingnow|newinstructions|revealyour|youarenow"
)
# "ign-ore prev-ious": a separator inside a word, found when joining the pieces makes a keyword appear.
_INNER_SEPARATOR = re.compile(r"[-_.*](?<=[a-z][-_.*])(?=[a-z])")
_KEYWORDS = frozenset(
    {"ignore", "disregard", "forget", "instructions", "previous", "prompt", "system", "override", "reveal"}
    | {"jailbreak", "password", "admin", "guidelines", "rules", "dan", "mode", "secret", "developer"}
)
_TAG_CHARS = re.compile("[\U000e0020-\U000e007e]")
_REVERSED_HINT = re.compile(r"snoitcurtsni|tpmorp|erongi|dragersid")
_ROT13_HINT = re.compile(r"\brot-? ?13\b|\bcaesar\b")
_ROT13_WORDS = frozenset({"rot", "rot13", "caesar"})
_BASE64_BLOB = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")
_HEX_BLOB = re.compile(r"\b(?:[0-9a-fA-F]{2}){8,}\b")
_SPLIT_WORDS = frozenset({"concatenate", "combine", "join", "merge", "together", "part", "parts"})
_QUOTED = re.compile(r"(?<![a-z])'([^'\n]{1,80})'(?![a-z])|\"([^\"\n]{1,80})\"")


def _decoded_blobs(raw: str) -> list[str]:
    """Base64 and hex blobs that decode to readable text: an instruction someone did not want seen."""
    found = []
    for blob in _BASE64_BLOB.findall(raw):
        try:
            decoded = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if " " in decoded and sum(c.isprintable() for c in decoded) >= 0.95 * len(decoded):
            found.append(decoded)
    for blob in _HEX_BLOB.findall(raw):
        try:
            decoded = bytes.fromhex(blob).decode("utf-8")
        except (UnicodeDecodeError, ValueError):
            continue
        if " " in decoded and decoded.isprintable():
            found.append(decoded)
    return found


def _chunk(text: str, hit: re.Match[str]) -> str:
    """The space-separated chunk holding `hit`, without surrounding punctuation: "1gn0r3", "ign-ore"."""
    start, end = text.rfind(" ", 0, hit.start()) + 1, text.find(" ", hit.end())
    return text[start : end if end >= 0 else len(text)].strip(".,;:!?'\"()[]{}<>\n")


def _around(text: str, matches: Iterable[re.Match[str]], margin: int = 150) -> str:
    """The text within `margin` characters of the matches, windows merged, one per line."""
    spans: list[list[int]] = []
    for match in matches:
        start, end = max(0, match.start() - margin), match.end() + margin
        if spans and start <= spans[-1][1]:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return "\n".join(text[start:end] for start, end in spans)


def _obfuscated_views(raw: str, primary: str, primary_words: frozenset[str]) -> list[tuple[str, float, str]]:
    """(marker rule, its weight, de-obfuscated text) for each trick the text shows; usually none."""
    views: list[tuple[str, float, str]] = []
    long_token = max(map(len, primary_words), default=0) >= 16 and any(
        len(word) >= 16 and "_" not in word for word in primary_words
    )
    if any(c in primary for c in "0134579@$|"):
        hits = list(_LEET_HINT.finditer(primary))
        if any(_chunk(primary, hit).translate(_LEET) in _KEYWORDS for hit in hits):
            views.append(("leetspeak", 0.4, _around(primary, hits).translate(_LEET)))
    if any(c in primary for c in "-_*"):
        hits = list(_INNER_SEPARATOR.finditer(primary))
        if any(_INNER_SEPARATOR.sub("", _chunk(primary, hit)) in _KEYWORDS for hit in hits):
            views.append(("split_words", 0.4, _INNER_SEPARATOR.sub("", _around(primary, hits))))
    if len(primary_words & _SINGLE_CHARACTERS) >= 4 and _SPACED_HINT.search(primary):
        runs = [_SPACED_SEPARATORS.sub("", run) for run in _SPACED_RUN.findall(primary)]
        squashed = [run for run in runs if _SQUASHED_ATTACK.search(run)]
        if squashed:
            views.append(("spaced_letters", 0.6, " ".join(squashed)))
    if ("snoitcurtsni" in primary or "tpmorp" in primary or "erongi" in primary) and _REVERSED_HINT.search(
        primary
    ):
        views.append(("reversed_text", 0.5, primary[::-1]))
    if not _ROT13_WORDS.isdisjoint(primary_words) and _ROT13_HINT.search(primary):
        views.append(("rot13_text", 0.5, codecs.decode(primary, "rot13")))
    if not raw.isascii() and _TAG_CHARS.search(raw):
        tags = "".join(chr(ord(c) - 0xE0000) for c in raw if "\U000e0020" <= c <= "\U000e007e")
        if tags:
            views.append(("unicode_tag_chars", 0.6, normalise(tags)))
    if long_token:
        views.extend(("encoded_payload", 0.6, normalise(d)) for d in _decoded_blobs(raw))
    if not _SPLIT_WORDS.isdisjoint(primary_words) or "+" in primary:
        parts = [a or b for a, b in _QUOTED.findall(primary)]
        if len(parts) >= 2:
            views.append(("split_payload", 0.5, "".join(parts)))
            views.append(("split_payload", 0.5, " ".join(p.strip() for p in parts)))
    return views


# Long texts are scanned in overlapping chunks, so that a rule runs only on the chunks holding its trigger
# words; a match longer than the overlap across a chunk boundary would be missed (rules match < 500 chars).
CHUNK_CHARS = 4096
CHUNK_OVERLAP_CHARS = 512

# Markers that are suspicious by themselves, whether or not a rule matched the hidden text.
_MARKERS_ALWAYS_COUNTED = frozenset({"spaced_letters", "unicode_tag_chars"})


class _RuleIndex:
    """Rules by trigger word, so a text only meets the rules its words can set off."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = tuple(rules)
        self._always = tuple(i for i, rule in enumerate(rules) if not rule.triggers)
        by_word: dict[str, list[int]] = {}
        for i, rule in enumerate(rules):
            if rule.triggers:
                for word in rule.triggers[0]:
                    by_word.setdefault(word, []).append(i)
        self._by_word = {word: tuple(ids) for word, ids in by_word.items()}
        self.anchor_words = frozenset(by_word)
        # The first group is met by the lookup; only the others are checked.
        self._other_groups = tuple(rule.triggers[1:] for rule in rules)

    def candidates(self, words: frozenset[str]) -> list[Rule]:
        ids = set(self._always).union(*[self._by_word[word] for word in self.anchor_words & words])
        return [
            self._rules[i]
            for i in sorted(ids)
            if not self._other_groups[i]
            or all(not group.isdisjoint(words) for group in self._other_groups[i])
        ]


# A rule's match holds one of its first trigger group's words, and no rule matches more than a few hundred
# characters: past this length, a rule is searched only around those words.
WINDOW_CHARS = 300
# Found as substrings: marks, and "bot"/"gpt" which `words` also finds at the end of a name ("opsbot").
_SUBSTRING_TRIGGERS = frozenset((*_MARKS, "bot", "gpt"))


class _Positions:
    """Where the index's words start in a normalised text, computed once and only if a rule asks."""

    def __init__(self, text: str, vocabulary: frozenset[str]) -> None:
        self._text = text
        self._vocabulary = vocabulary
        self._by_word: dict[str, list[int]] | None = None

    def starts(self, words: Iterable[str]) -> list[int]:
        """Where any of `words` starts as a whole word (marks, "bot", "gpt": anywhere), in order."""
        if self._by_word is None:
            self._by_word = _word_positions(self._text, self._vocabulary)
        starts: list[int] = []
        for word in words:
            if word in _SUBSTRING_TRIGGERS:
                start = self._text.find(word)
                while start >= 0:
                    starts.append(start)
                    start = self._text.find(word, start + 1)
            else:
                starts.extend(self._by_word.get(word, ()))
        return sorted(starts)


def _word_positions(text: str, vocabulary: frozenset[str]) -> dict[str, list[int]]:
    # The same split as `words()`, keeping offsets: non-ASCII runs become as many spaces, and every other
    # non-word character one space, so a piece's offset is the running sum of lengths.
    if not text.isascii():
        text = _NON_ASCII.sub(lambda run: " " * len(run.group()), text)
    pieces = text.translate(_NOT_WORD).split(" ")
    lengths_before = list(accumulate(map(len, pieces), initial=0))
    positions: dict[str, list[int]] = {}
    for i in [i for i, piece in enumerate(pieces) if piece in vocabulary]:
        positions.setdefault(pieces[i], []).append(lengths_before[i] + i)
    return positions


# An anchored rule with more starts than this is searched instead: one pass in C beats many tries.
MAX_ANCHORED_TRIES = 24


def _search(rule: Rule, text: str, text_words: frozenset[str], positions: _Positions) -> re.Match[str] | None:
    """`rule.pattern.search(text)`, tried only where the rule's first trigger words are."""
    if not rule.triggers or (not rule.anchored and len(text) <= 4 * WINDOW_CHARS):
        return rule.pattern.search(text)
    starts = positions.starts(rule.triggers[0] & text_words)
    if rule.anchored and len(starts) <= MAX_ANCHORED_TRIES:
        for start in starts:
            if match := rule.pattern.match(text, start):
                return match
        return None
    if len(text) <= 4 * WINDOW_CHARS:
        return rule.pattern.search(text)
    windows: list[list[int]] = []
    for start in starts:
        if windows and start - WINDOW_CHARS <= windows[-1][1]:
            windows[-1][1] = start + WINDOW_CHARS
        else:
            windows.append([max(0, start - WINDOW_CHARS), start + WINDOW_CHARS])
    for start, end in windows:
        if match := rule.pattern.search(text, start, end):
            return match
    return None


class InjectionDetector:
    """Scores a text for prompt injection with weighted rules; `check` is pure and thread-safe."""

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        extra_rules: Sequence[Rule] = (),
        max_chars: int = DEFAULT_MAX_CHARS,
        rules: Sequence[Rule] | None = None,
    ) -> None:
        """`rules` replaces the built-in `default_rules()`; `extra_rules` are added to them."""
        if not 0.0 < threshold <= 1.0:
            raise ConfigurationError(f"threshold must be in (0, 1], not {threshold}")
        if max_chars < 1:
            raise ConfigurationError(f"max_chars must be positive, not {max_chars}")
        all_rules = (*(default_rules() if rules is None else rules), *extra_rules)
        for rule in all_rules:
            if not 0.0 <= rule.weight <= 1.0:
                raise ConfigurationError(f"rule {rule.name!r} weight must be in [0, 1], not {rule.weight}")
        self.threshold = threshold
        self.max_chars = max_chars
        self._rules = {
            source: _RuleIndex([r for r in all_rules if source in r.sources]) for source in ("user", "tool")
        }

    def check(self, text: str, *, source: Source = "user") -> InjectionVerdict:
        """Score `text` (user input or a tool's output); only the first `max_chars` characters are read."""
        truncated = len(text) > self.max_chars
        if truncated:
            text = text[: self.max_chars]
        hits: dict[str, tuple[float, str]] = {}  # rule name -> (weight, excerpt), the strongest hit
        for start in range(0, max(1, len(text) - CHUNK_OVERLAP_CHARS), CHUNK_CHARS):
            self._scan(text[start : start + CHUNK_CHARS + CHUNK_OVERLAP_CHARS], self._rules[source], hits)
        return self._verdict(hits, truncated)

    @staticmethod
    def _scan(text: str, rules: _RuleIndex, hits: dict[str, tuple[float, str]]) -> None:
        primary = normalise(text)
        primary_words = words(primary)
        described: bool | None = None  # does the text talk about attacks? computed on the first hit
        positions = _Positions(primary, rules.anchor_words)
        for rule in rules.candidates(primary_words):
            match = _search(rule, primary, primary_words, positions)
            if match is None:
                continue
            weight = rule.weight
            if _MENTION_BEFORE.search(primary, max(0, match.start() - 120), match.start()):
                if described is None:
                    described = not _DISCUSSION_WORDS.isdisjoint(primary_words) and bool(
                        _DISCUSSION.search(primary)
                    )
                if described:
                    weight *= DESCRIBED_FACTOR
            _hit(hits, rule.name, weight, match.group())
        for marker, weight, view in _obfuscated_views(text, primary, primary_words):
            found = False
            view_words, view_positions = words(view), _Positions(view, rules.anchor_words)
            for rule in rules.candidates(view_words):
                if rule.name in hits:
                    continue
                match = _search(rule, view, view_words, view_positions)
                if match is not None:
                    _hit(hits, rule.name, rule.weight, match.group())
                    found = True
            if found or marker in _MARKERS_ALWAYS_COUNTED:
                _hit(hits, marker, weight, view)
        if not text.isascii():
            if _ZERO_WIDTH_IN_WORD.search(text):
                _hit(hits, "zero_width_chars", 0.25, "")
            if _MIXED_SCRIPT.search(text):
                _hit(hits, "mixed_script", 0.35, "")

    def _verdict(self, hits: dict[str, tuple[float, str]], truncated: bool) -> InjectionVerdict:
        ordered = sorted(hits.items(), key=lambda item: -item[1][0])
        remaining = 1.0
        for _, (weight, _excerpt) in ordered:
            remaining *= 1.0 - weight
        excerpt = next((e for _, (_w, e) in ordered if e), "")
        return InjectionVerdict(
            score=round(min(1.0, 1.0 - remaining), 4),
            rules=tuple(name for name, _ in ordered),
            excerpt=excerpt[:EXCERPT_MAX_CHARS],
            threshold=self.threshold,
            truncated=truncated,
        )


def _hit(hits: dict[str, tuple[float, str]], name: str, weight: float, excerpt: str) -> None:
    if name not in hits or hits[name][0] < weight:
        hits[name] = (weight, excerpt)
