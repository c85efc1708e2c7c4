"""The semantic cache's hit guard: a lexical check of what embedding similarity cannot see.

Paraphrase models score opposite meanings as near-identical ("enable 2FA" / "disable 2FA": 0.9+), and
different order ids or amounts as identical. A candidate hit is rejected when the two queries differ in
negation, direction, numbers, identifiers or one swapped term. Pure Python, no dependencies.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

__all__ = ["GuardVerdict", "HitGuard", "QuerySignature", "signature_of"]

GuardCategory = Literal["negation", "direction", "numbers", "identifiers", "substitution"]


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """Whether a semantic candidate may be served; `category` and `reason` say why not."""

    ok: bool
    category: GuardCategory | None = None
    reason: str | None = None


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Families of opposite words, split by ";" or a line end (a family never spans lines); sides split by
# "|", words by ","; particle phrases joined by "_".
# Inflections are generated. A rejection needs the queries on different sides, not one side silent.
_FAMILIES = """enable,activate,turn_on,switch_on,set_up|disable,deactivate,turn_off,switch_off,shut_off
    on|off; up,rise,rose,risen,climb|down,fall,fell,fallen,drop; buy,bought,purchase|sell,sold
    increase,raise,more,grow,expand,boost,extend|decrease,lower,reduce,less,fewer,shrink,cut
    high,higher,highest|low,lower,lowest; upgrade|downgrade
    add,insert,attach|remove,delete,drop,detach,take_off; open,reopen|close,closed,shut; import|export
    upload|download; credit|debit; refund,reimburse,reimbursed|charge,charged
    deposit|withdraw,withdrew,withdrawn; before,earlier,prior|after,later; above,over,exceed|below,under
    allow,permit,whitelist,allowlist,grant|block,deny,denied,blacklist,blocklist,revoke,forbid,ban,prevent
    approve,accept,accepted|reject,deny,denied,decline,refuse
    start,begin,began,begun|stop,end,finish,halt; pause,suspend|resume,unpause,continue
    cancel,terminate|keep,kept,renew,continue,retain,reactivate
    send,sent,outgoing,outbound|receive,incoming,inbound; push|pull; public|private
    show,reveal|hide,hidden; join|leave,left
    log_in,sign_in,login,signin,logon|log_out,sign_out,logout,signout,log_off; opt_in|opt_out
    oldest,earliest|newest,latest; last,previous|next,upcoming; new,newer,newest|old,older,existing
    ascending|descending; min,minimum,lowest,smallest|max,maximum,highest,largest,biggest
    forward,ahead|back,backward,rollback,revert; early|late
    succeed,success,successful,successfully|fail,failed,failure; fast,faster,quick|slow,slower,sluggish
    include|exclude; encrypt|decrypt; cheap,cheaper,cheapest|expensive,pricier,priciest
    positive|negative; lend,lent|borrow; today,tonight|tomorrow|yesterday; win,won|lose,lost
    right,correct|wrong,incorrect; true|false"""
_NEGATIONS = _words("not no never none nothing nobody nowhere neither nor without cannot unable cant dont")
_STOPPING = _words("stop stops stopped quit quits ceased")  # "stop receiving" says "no longer receive"
_BARE_NEGATIONS = _words("wont doesnt isnt didnt arent wasnt werent havent hasnt couldnt shouldnt")
_NUMBER_WORDS = dict(
    pair.split(":")
    for pair in _words(
        "two:2 three:3 four:4 five:5 six:6 seven:7 eight:8 nine:9 ten:10 eleven:11 twelve:12 twenty:20 "
        "thirty:30 forty:40 fifty:50 sixty:60 seventy:70 eighty:80 ninety:90 hundred:100 thousand:1000 "
        "twice:2 thrice:3 second:2 third:3 fourth:4 fifth:5 sixth:6 seventh:7 eighth:8 ninth:9 tenth:10"
    )
)
_ALIASES = {"2fa": "twofactor", "two-factor": "twofactor", "2-factor": "twofactor", "mfa": "multifactor"}
_CURRENCIES = {
    **{code: code for code in _words("usd eur gbp jpy chf cad aud nzd inr cny sek nok dkk pln mxn brl sgd")},
    **dict.fromkeys(_words("$ dollar dollars buck bucks"), "usd"),
    **dict.fromkeys(_words("€ euro euros"), "eur"),
    **dict.fromkeys(_words("£ pound pounds sterling"), "gbp"),
    **dict.fromkeys(_words("¥ yen"), "jpy"),
}
_CALENDAR = _words(
    "january february march april june july august september october november december jan feb aug sept "
    "oct nov dec monday tuesday wednesday thursday friday saturday sunday weekend weekday"
)
_SKIPPED = _words("the a an my our your their his her its this that these those me us them some")
# Function words: ignored when looking for one swapped content word ("marketing team" vs "finance team").
_STOPWORDS = (
    _SKIPPED
    | _NEGATIONS
    | _words(
        "i you we it he she they is are was were be been am do does did have has had can could will would "
        "should may might must what when where why how who which there here please hi hello thanks to from "
        "for of in on at by with about into as and or but if so than then too very just also all any each "
        "every again still get got make let want need like i'm i'd it's what's"
    )
)
_TOKEN = re.compile(r"[$€£¥]|[A-Za-z0-9][A-Za-z0-9'_%-]*(?:\.\d+)*")
_SPECIAL_IDS = re.compile(
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # email
    r"|https?://\S+"  # URL
    r"|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b"  # host name
    r"|\bv?\d+(?:\.\d+){2,}\b"  # version
    r"|\b\d{1,4}[/-]\d{1,2}[/-]\d{1,4}\b",  # date
    re.IGNORECASE,
)
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)(k|m|st|nd|rd|th|%|gb|mb|tb|kb|kg|g|ms|s|h|am|pm|x)?")


def _forms(word: str) -> set[str]:
    forms = {word, word + "s", word + "es", word + "ed", word + "d", word + "ing"}
    if word.endswith("e"):
        forms.add(word[:-1] + "ing")
    if len(word) > 2 and word[-1] not in "aeiouwy" and word[-2] in "aeiou":
        forms |= {word + word[-1] + "ed", word + word[-1] + "ing"}
    return forms


def _parse_families(spec: str) -> dict[str, list[tuple[int, int]]]:
    index: dict[str, list[tuple[int, int]]] = {}
    for family, text in enumerate(re.split(r"[;\n]", spec)):
        for side, words in enumerate(text.split("|")):
            for word in filter(None, (w.strip() for w in words.split(","))):
                for form in _forms(word) if "_" not in word else {word}:
                    index.setdefault(form, []).append((family, side))
    return index


_FAMILY_INDEX = _parse_families(_FAMILIES)


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if suffix in ("ing", "ed") and word[-1] == word[-2] and word[-1] not in "dlsz":
                word = word[:-1]  # stopped -> stop, resetting -> reset; but added, installed, passed
            break
    return word.removesuffix("e")


def _antonym_prefixed(stem: str, other: str) -> bool:
    """`other` is `stem` with a negating prefix: lock/unlock, connect/disconnect, valid/invalid."""
    if len(stem) >= 4 and other in {p + stem for p in ("un", "dis", "de", "non")}:
        return True
    adjective = len(stem) >= 5 and stem.endswith(("abl", "ibl", "iv", "ect", "et", "at", "ur", "al", "id"))
    return adjective and other in {p + stem for p in ("in", "im", "il", "ir")}


def _negates(word: str) -> bool:
    if word in _NEGATIONS or word in _BARE_NEGATIONS or word.endswith("n't"):
        return True
    # Negated adjectives say the same as "not ...": unreachable = can't be reached, uninsured, unpaid.
    return word.startswith("un") and not word.startswith("under") and word.endswith(("able", "ible", "ed"))


def _looks_like_a_name(raw: str, initial: bool) -> bool:
    """Acronyms (VPN) and mixed case (iPhone) anywhere; Capitalised words (Berlin) past a sentence start."""
    if raw == "I" or raw.startswith("I'"):
        return False
    letters = raw.replace("-", "")
    if len(letters) >= 2 and letters.isupper():
        return True
    return any(c.isupper() for c in raw[1:]) or (raw[0].isupper() and not initial)


@dataclass(frozen=True, slots=True)
class QuerySignature:
    """What the guard compares, computed once per query (cache entries keep theirs)."""

    words: frozenset[str]  # every lowercased token, hyphenated parts too
    stems: frozenset[str]
    content: frozenset[str]  # stems of content words
    numbers: frozenset[str]
    identifiers: frozenset[str]  # must match exactly: ids, emails, hosts, dates, currencies, calendar
    names: frozenset[str]  # acronyms and proper names: only a swap counts (Visa vs Mastercard)
    negated: bool
    sides: dict[int, frozenset[int]]  # opposite-word family -> the sides this query uses
    sources: frozenset[str]  # words after "from", before "to"
    targets: frozenset[str]  # words after "to" / "into"
    currencies: tuple[str, ...]  # in order of appearance


def signature_of(text: str) -> QuerySignature:
    text = unicodedata.normalize("NFKC", text).replace("’", "'")
    identifiers = {m.group(0).lower() for m in _SPECIAL_IDS.finditer(text)}
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", _SPECIAL_IDS.sub(" ", text))
    words: list[str] = []
    numbers: set[str] = set()
    names: set[str] = set()
    for match in _TOKEN.finditer(text):
        raw = match.group(0)
        lowered = raw.lower().removesuffix("'s")  # possessive: a colleague's account
        token = _CURRENCIES.get(lowered, _ALIASES.get(lowered, lowered))
        before = text[: match.start()].rstrip()
        if any(c.isdigit() for c in token):
            number = _NUMBER.fullmatch(token)
            if number:
                numbers.add(f"{float(number.group(1)) * (1000 if number.group(2) == 'k' else 1):g}")
            else:
                identifiers.add(token.replace("-", "").replace("_", ""))
        elif token in _NUMBER_WORDS:
            numbers.add(_NUMBER_WORDS[token])
        elif token in _CALENDAR or token in _CURRENCIES.values():
            identifiers.add(token)
        elif _looks_like_a_name(raw, initial=not before or before[-1] in ".!?:;\n\"'("):
            names.add(token)
        words.append(token)
    expanded = set(words) | {part for w in words for part in w.split("-") if part}
    # Particle verbs, with an object between them too: "opt in", "opt me in", "turn it off".
    phrases = {f"{a}_{b}" for gap in (1, 2) for a, b in zip(words, words[gap:], strict=False)}
    sides: dict[int, set[int]] = {}
    for word in expanded | phrases:
        for family, side in _FAMILY_INDEX.get(word, ()):
            sides.setdefault(family, set()).add(side)
    sources: set[str] = set()
    targets: set[str] = set()
    for i, word in enumerate(words):
        if word in ("to", "into", "from"):
            following = next((w for w in words[i + 1 :] if w not in _SKIPPED), None)
            if following is not None:
                (sources if word == "from" else targets).add(following)
            if word != "from" and i > 0:
                sources.add(words[i - 1])
    return QuerySignature(
        words=frozenset(expanded),
        stems=frozenset(_stem(w) for w in expanded),
        content=frozenset(_stem(w) for w in expanded if w not in _STOPWORDS and not w.isdigit()),
        numbers=frozenset(numbers),
        identifiers=frozenset(identifiers),
        names=frozenset(names),
        negated=any(_negates(w) for w in words)
        or any(w in _STOPPING and nxt.endswith("ing") for w, nxt in itertools.pairwise(words)),
        sides={family: frozenset(s) for family, s in sides.items()},
        sources=frozenset(sources),
        targets=frozenset(targets),
        currencies=tuple(dict.fromkeys(w for w in words if w in _CURRENCIES.values())),
    )


class HitGuard:
    """Rejects a semantic candidate whose query differs from the new one in what similarity misses.

    Checked in order: negation, direction (opposite words, un-/dis- prefixes, from/to and currency order
    swapped), numbers (amounts, dates, counts), identifiers (ids, emails, hosts, codes; names only when
    swapped), and one swapped content word in otherwise identical queries. A miss costs a model call; a
    false hit serves a wrong answer, so the guard errs towards rejecting.
    """

    def __init__(self, *, max_swapped_words: int = 1) -> None:
        self._max_swapped_words = max_swapped_words

    def check(self, cached_query: str, query: str) -> GuardVerdict:
        return self.check_signatures(signature_of(cached_query), signature_of(query))

    def check_signatures(self, a: QuerySignature, b: QuerySignature) -> GuardVerdict:
        if a.negated != b.negated:
            return GuardVerdict(False, "negation", "one query is negated and the other is not")
        direction = _direction_conflict(a, b)
        if direction is not None:
            return GuardVerdict(False, "direction", direction)
        if a.numbers != b.numbers:
            return GuardVerdict(False, "numbers", f"numbers differ: {_show(a.numbers)} vs {_show(b.numbers)}")
        if a.identifiers != b.identifiers:
            only_a, only_b = a.identifiers - b.identifiers, b.identifiers - a.identifiers
            return GuardVerdict(
                False, "identifiers", f"identifiers differ: {_show(only_a)} vs {_show(only_b)}"
            )
        names_a, names_b = a.names - b.words, b.names - a.words
        if names_a and names_b:
            return GuardVerdict(False, "identifiers", f"names differ: {_show(names_a)} vs {_show(names_b)}")
        swapped_a, swapped_b = a.content - b.content, b.content - a.content
        if 0 < len(swapped_a) <= self._max_swapped_words and 0 < len(swapped_b) <= self._max_swapped_words:
            reason = f"one term swapped: {_show(swapped_a)} vs {_show(swapped_b)}"
            return GuardVerdict(False, "substitution", reason)
        return GuardVerdict(True)


def _direction_conflict(a: QuerySignature, b: QuerySignature) -> str | None:
    for family, sides_a in a.sides.items():
        sides_b = b.sides.get(family)
        if sides_b and sides_a != sides_b:
            return f"opposite words (family {family}): sides {sorted(sides_a)} vs {sorted(sides_b)}"
    for x, y in ((a, b), (b, a)):
        for stem in x.stems - y.stems:
            other = next((o for o in y.stems - x.stems if _antonym_prefixed(stem, o)), None)
            if other is not None:
                return f"opposite words: {stem!r} vs {other!r}"
        crossed = (x.sources & y.targets) - y.sources
        if crossed:
            return f"direction reversed: {_show(crossed)} is a source in one query and a target in the other"
    if len(a.currencies) > 1 and set(a.currencies) == set(b.currencies) and a.currencies != b.currencies:
        return f"currency order differs: {'→'.join(a.currencies)} vs {'→'.join(b.currencies)}"
    return None


def _show(values: set[str] | frozenset[str]) -> str:
    return "{" + ", ".join(sorted(values)) + "}" if values else "{}"
