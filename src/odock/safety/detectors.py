"""SafetySec's built-in detectors (reference §7.4): personal data, credentials, prompt injection and jailbreaks.

Everything here is offline and dependency-free: compiled regular expressions with cheap substring gates (a
pattern whose tell-tale substring is absent costs one `in` test), checksum validators (Luhn, IBAN mod-97), an
entropy test for generic tokens, and phrase sets over normalized text for injection and jailbreak attempts.

Public contract (the plugins' `pii_mask` builds on it; extend, never break):

    Finding(start, end, category, module)       a half-open span of the scanned text
    scan(text, categories=None) -> [Finding]     non-overlapping, sorted by start
    redact(text, findings) -> str                each span replaced by `[REDACTED_<CATEGORY>]`

`categories` may name categories (`email`, `openai_key`, …) or whole modules (`pii`, `secrets`, `injection`,
`jailbreak`); None runs every built-in detector.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import math
import re
import unicodedata
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import re2  # type: ignore[import-untyped]

__all__ = [
    "CATEGORIES",
    "MODULES",
    "Finding",
    "marker",
    "normalize",
    "redact",
    "scan",
]


@dataclass(frozen=True, slots=True)
class Finding:
    """A detected span `text[start:end]`: what it is (`category`) and which module found it."""

    start: int
    end: int
    category: str
    module: str


def marker(category: str) -> str:
    return f"[REDACTED_{category.upper()}]"


def redact(text: str, findings: Sequence[Finding]) -> str:
    """`text` with every finding's span replaced by its marker (findings sorted and non-overlapping)."""
    if not findings:
        return text
    out: list[str] = []
    pos = 0
    for f in findings:
        if f.start < pos:  # tolerate an overlapping caller-built list: the earlier span wins
            continue
        out.append(text[pos : f.start])
        out.append(marker(f.category))
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


# --- validators --------------------------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1
    except ValueError:
        return False


def entropy(token: str) -> float:
    """Shannon entropy in bits per character."""
    counts: dict[str, int] = {}
    for ch in token:
        counts[ch] = counts.get(ch, 0) + 1
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _char_classes(token: str) -> int:
    return any(c.isupper() for c in token) + any(c.islower() for c in token) + any(c.isdigit() for c in token)


# --- the detectors -----------------------------------------------------------------------------------------
# CPython's regex engine pays for every position it tries, so no pattern is run over the whole text unless it
# can skip fast: each detector has a gate (a substring of which one must occur, checked at C speed), patterns
# start with a literal or a character class (the engine's prefix scan) and check their left boundary in the
# validator rather than in a lookbehind, and the number-shaped detectors run only inside the few regions that
# look like numbers at all.

Validator = Callable[[str, int, int], bool]


@dataclass(frozen=True, slots=True)
class Detector:
    category: str
    module: str
    pattern: re.Pattern[str]
    gate: tuple[str, ...] = ()  # one of these substrings must occur (empty: no gate)
    pre: str = ""  # a character every match holds: a memchr-speed test before the gate's substring tests
    validator: Validator | None = None  # confirms a match (boundaries, checksums, entropy)
    priority: int = 5  # lower wins when two detectors claim the same span
    region: str = (
        "text"  # text | numeric (only inside number-shaped regions) | long (only when a long word exists)
    )


_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_TOKEN_CHARS = _WORD | frozenset("-+/=")
_DIGITS = frozenset("0123456789")


def _left_free(text: str, start: int, chars: frozenset[str]) -> bool:
    return start == 0 or text[start - 1] not in chars


def _free_word(text: str, start: int, end: int) -> bool:
    return _left_free(text, start, _WORD | {"-"})


def _card(text: str, start: int, end: int) -> bool:
    if not _left_free(text, start, _DIGITS | {"-"}):
        return False
    digits = text[start:end].replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _aws_secret(text: str, start: int, end: int) -> bool:
    token = text[start:end]
    return (
        _left_free(text, start, _WORD | {"/", "+", "="})
        and _char_classes(token) == 3
        and entropy(token) >= 4.2
    )


def _token(text: str, start: int, end: int) -> bool:
    token = text[start:end]
    return (
        end - start <= MAX_TOKEN
        and _left_free(text, start, _TOKEN_CHARS)
        and _char_classes(token) == 3
        and entropy(token) >= 4.0
    )


MAX_TOKEN = 1024  # a longer run is data (an inline blob), not a credential


def _iban(text: str, start: int, end: int) -> bool:
    return _left_free(text, start, _WORD) and iban_ok(text[start:end])


def _ipv4(text: str, start: int, end: int) -> bool:
    # the unspecified, loopback and broadcast addresses say nothing about anyone
    address = text[start:end]
    return address not in ("0.0.0.0", "255.255.255.255") and not address.startswith("127.")


def _nino(text: str, start: int, end: int) -> bool:
    return _left_free(text, start, _WORD) and text[start : start + 2] not in _NINO_INVALID


_NINO_INVALID = frozenset({"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"})


def _ipv6(text: str, start: int, end: int) -> bool:
    candidate = text[start:end]
    if not _left_free(text, start, _WORD | {":"}) or not any(c.isdigit() for c in candidate):
        return False
    if "::" not in candidate and candidate.count(":") != 7:  # neither compressed nor eight groups: no address
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _left_not(chars: str) -> Validator:
    blocked = frozenset(chars)
    return lambda text, start, end: _left_free(text, start, blocked)


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_B64 = "A-Za-z0-9+/"

DETECTORS: tuple[Detector, ...] = (
    # --- secrets (module "secrets") ---
    Detector(
        "private_key",
        "secrets",
        # to the END line, or to the end of the text (a key cut short is still a key)
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
            r"(?:[A-Za-z0-9+/=\s:,\-]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|[A-Za-z0-9+/=\s:,\-]*)"
        ),
        gate=("-----BEGIN",),
        pre="-",
        priority=0,
    ),
    Detector(
        "anthropic_key",
        "secrets",
        re.compile(r"sk-ant-(?:api|admin|oat|sid)\d{2}-[A-Za-z0-9_\-]{20,}"),
        gate=("sk-ant-",),
        pre="-",
        validator=_free_word,
        priority=1,
    ),
    Detector(
        "openai_key",
        "secrets",
        re.compile(r"sk-(?!ant-)(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,}"),
        gate=("sk-",),
        pre="-",
        validator=_free_word,
        priority=1,
    ),
    Detector(
        "stripe_key",
        "secrets",
        re.compile(r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{24,}"),
        gate=("_live_", "_test_", "whsec_"),
        pre="_",
        validator=_free_word,
        priority=1,
    ),
    Detector(
        "aws_access_key",
        "secrets",
        re.compile(r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])"),
        gate=("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "AIPA"),
        pre="A",
        validator=_left_not("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
        priority=1,
    ),
    Detector(
        "github_token",
        "secrets",
        re.compile(r"gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}"),
        gate=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        pre="_",
        validator=_free_word,
        priority=1,
    ),
    Detector(
        "slack_token",
        "secrets",
        re.compile(
            r"xox[abposre]-[A-Za-z0-9\-]{10,}|https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+"
        ),
        gate=("xox", "hooks.slack.com"),
        pre="o",  # in both gates (an "x" missed the webhook URLs)
        validator=_free_word,
        priority=1,
    ),
    Detector(
        "google_api_key",
        "secrets",
        re.compile(r"AIza[0-9A-Za-z_\-]{35}(?![A-Za-z0-9_\-])"),
        gate=("AIza",),
        pre="I",
        validator=_free_word,
        priority=1,
    ),
    Detector(
        "jwt",
        "secrets",
        re.compile(r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
        gate=("eyJ",),
        pre="J",
        validator=_free_word,
        priority=1,
    ),
    Detector(
        "aws_secret_key",
        "secrets",
        re.compile(rf"[{_B64}]{{40}}(?![{_B64}=])"),
        validator=_aws_secret,
        priority=2,
        region="long",
    ),
    Detector(
        "token",
        "secrets",
        # greedy and unbounded: a run is matched once (a bounded repeat would retry every start in a long run)
        re.compile(r"[A-Za-z0-9_\-+/=]{32,}"),
        validator=_token,
        priority=3,
        region="long",
    ),
    # --- personal data (module "pii") ---
    Detector(
        "email",
        "pii",
        re.compile(
            r"[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@"
            r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9\-])"
        ),
        gate=("@",),
        pre="@",
        validator=_left_not("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-"),
        priority=2,
        region="email",
    ),
    Detector(
        "iban",
        "pii",
        re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"),
        validator=_iban,
        priority=2,
        region="near_numeric",
    ),
    Detector(
        "national_id",
        "pii",
        # UK National Insurance numbers (US SSNs are number-shaped: below)
        re.compile(r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])"),
        validator=_nino,
        priority=3,
        region="near_numeric",
    ),
    Detector(
        "card",
        "pii",
        re.compile(r"\d(?:[ \-]?\d){12,18}(?!\d)"),
        validator=_card,
        priority=2,
        region="numeric",
    ),
    Detector(
        "national_id",
        "pii",
        # US SSN: area, group and serial never zero, the area never 666 or 9xx
        re.compile(r"(?<![\d\-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d\-])"),
        priority=3,
        region="numeric",
    ),
    Detector(
        "phone",
        "pii",
        re.compile(
            r"(?<![\w+\-.])(?<!\d )(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{3,4}[ .\-]\d{3,5}"
            r"(?![\w\-]|[ .]\d)"
            r"|(?<![\w+])\+\d{10,14}(?!\w)"
        ),
        priority=4,
        region="numeric",
    ),
    Detector(
        "ip",
        "pii",
        re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)"),
        validator=_ipv4,
        priority=4,
        region="numeric",
    ),
    Detector(
        "ip",
        "pii",
        re.compile(r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])"),
        pre=":",
        validator=_ipv6,
        priority=4,
        region="ipv6",
    ),
)

# a region that may hold a number-shaped detector's match: digits with their usual separators
_NUMERIC = re.compile(r"[+(\d][\d \-.()]{5,}\d")
_LONG_WORD = 32  # the token detectors' shortest match (aws_secret_key is 40)


# ASCII digits as b"0", the separators numbers use as b"s", everything else b"x": number-shaped regions are
# then found by a pattern that starts with a literal (the engine skips to each digit at memchr speed)
_NUMERIC_MAP = bytes(48 if 48 <= b <= 57 else 115 if chr(b) in " -.()" else 120 for b in range(256))
_NUMERIC_BYTES = re.compile(rb"0[0s]{5,}0")


def _numeric_regions(text: str, digits: int) -> list[tuple[int, int]]:
    # a window two characters wider on the right: the patterns' lookaheads see the real next characters
    if digits < 4:  # the shortest number-shaped match (an IPv4 address) has four digits
        return []
    n = len(text)
    if text.isascii():
        mapped = text.encode("ascii").translate(_NUMERIC_MAP)
        return [
            (m.start() - 1 if m.start() and text[m.start() - 1] in "+(" else m.start(), min(n, m.end() + 2))
            for m in _NUMERIC_BYTES.finditer(mapped)
        ]
    return [(m.start(), min(len(text), m.end() + 2)) for m in _NUMERIC.finditer(text)]


# token characters (letters, digits, _-+/=) as b"a", everything else a space: a run of N token characters is
# then one C-speed substring test
_RUN = bytes(97 if (chr(b).isalnum() or chr(b) in "_-+/=") and b < 128 else 32 for b in range(256))


def _longest_run_at_least(text: str, length: int) -> bool:
    return len(text) >= length and b"a" * length in text.encode("utf-8", "surrogatepass").translate(_RUN)


def _has_long_word(text: str) -> bool:
    return _longest_run_at_least(text, _LONG_WORD)


def _runs(raw: bytes, length: int) -> list[tuple[int, int]]:
    """The maximal runs of token characters at least `length` long in an ASCII text's bytes (half-open spans)."""
    mapped = raw.translate(_RUN)
    needle = b"a" * length
    runs = []
    at = mapped.find(needle)  # the first occurrence in a run is the run's start
    while at != -1:
        end = mapped.find(b" ", at + length)
        if end == -1:
            end = len(mapped)
        runs.append((at, end))
        at = mapped.find(needle, end)
    return runs


def _merge(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in windows:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _around(text: str, needle: str, before: int, after: int) -> list[tuple[int, int]]:
    windows = []
    at = text.find(needle)
    while at != -1:
        windows.append((max(0, at - before), min(len(text), at + len(needle) + after)))
        at = text.find(needle, at + 1)
    return _merge(windows)


def _positions(text: str, needle: str) -> list[int]:
    found = []
    at = text.find(needle)
    while at != -1:
        found.append(at)
        at = text.find(needle, at + 1)
    return found


def _ipv6_windows(text: str) -> list[tuple[int, int]]:
    """Around "::" (a compressed address), or where seven colons fall within 39 characters (a full one); the whole
    text when colons are too many to place each (`_ipv6_matches` is linear in the text either way)."""
    count = text.count(":")
    if count > _MANY_COLONS:
        return [(0, len(text))]
    windows = _around(text, "::", 40, 40) if "::" in text else []
    if count >= 7:
        colons = _positions(text, ":")
        windows += [
            (max(0, colons[i] - 4), min(len(text), colons[i + 6] + 5))
            for i in range(len(colons) - 6)
            if colons[i + 6] - colons[i] <= 39
        ]
    return _merge(sorted(windows))


_MANY_COLONS = 1024
_HEX_RUN = re.compile(r"[0-9A-Fa-f:]+")
_IPV6_LONGEST = 39  # eight groups of four and seven colons


def _ipv6_matches(
    pattern: re.Pattern[str], text: str, windows: list[tuple[int, int]]
) -> Iterator[re.Match[str]]:
    """The IPv6 pattern's matches in `windows`, each a whole run of hex digits and colons: the validator takes
    none with a word character or colon before it and the pattern none with one after it, so each run of at most
    39 characters holding two colons is matched once, where `finditer` would try (and backtrack) at every
    position of a long run (4 KB of them took milliseconds)."""
    for start, end in windows:
        for run in _HEX_RUN.finditer(text, start, end):
            run_start, run_end = run.span()
            if run_end == end:  # cut by the window: its real end
                run_end = _HEX_RUN.match(text, run_start).end()  # type: ignore[union-attr]
            if run_end - run_start > _IPV6_LONGEST or text.count(":", run_start, run_end) < 2:
                continue
            m = pattern.match(text, run_start)
            if m is not None and m.end() == run_end:
                yield m


_LOCAL_PART = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-"
_EMAIL_SPAN = 256  # how far past its '@' an address is looked for (the local part is at most 64 before it)


def _email_matches(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """The e-mail pattern's matches, tried only where one can start.

    A match holds one '@' and its local part is the (up to 64) local-part characters right before it, starting
    with a letter or digit: for each '@' that one start is found at C speed (rstrip/lstrip) and the pattern is
    matched there once, where `finditer` would try and fail at every position around it."""
    pos = 0  # the end of the last match: the next starts after it
    at = text.find("@")
    while at != -1:
        if at > pos:
            before = text[max(pos, at - 64) : at]
            start = at - (len(before) - len(before.rstrip(_LOCAL_PART)))
            local = text[start:at]
            start += len(local) - len(local.lstrip("._%+-"))
            if start < at:
                m = pattern.match(text, start, at + _EMAIL_SPAN)
                if m is not None:
                    yield m
                    pos = m.end()
        at = text.find("@", at + 1)


# --- injection and jailbreak phrases over normalized text -------------------------------------------------
# Each rule starts with a literal lead word (the regex engine then skips to its occurrences at memchr speed,
# where a leading \b or alternation would cost a step per character) and runs only when its lead word, and one
# of its `also` words if any, occur among the normalized text's words (one set lookup each). The left word
# boundary is checked in Python.

_PREV = r"(?:previous|prior|above|earlier|preceding|former|original|initial|all|any|your|the|these|those)"
_NOUNS = (
    r"(?:instructions?|prompts?|rules|directions|directives|guidelines|context|messages?|commands|orders|guidance"
    r"|constraints|programming|training)"
)
_QUALS = (
    r"(?:hidden\s+|secret\s+|original\s+|initial\s+|full\s+|exact\s+|entire\s+|internal\s+|confidential\s+"
    r"|complete\s+|verbatim\s+)"
)
_SYSTEM_OBJ = r"(?:system\s+(?:prompt|message|instructions?)|developer\s+(?:message|prompt|instructions?)|initial\s+prompt)"
_REVEAL = (
    r"\s+(?:me\s+|us\s+)?(?:all\s+)?(?:of\s+)?"
    rf"(?:your\s+{_QUALS}*(?:{_SYSTEM_OBJ}|instructions|prompt)|the\s+{_QUALS}*{_SYSTEM_OBJ}"
    rf"|the\s+{_QUALS}+(?:instructions|prompt))\b"
)
_OVERRIDE = (
    r"\s+(?:all\s+|any\s+|your\s+|the\s+|of\s+)*(?:previous\s+|prior\s+|system\s+|built-in\s+)?(?:instructions"
    r"|rules|restrictions|guidelines|safety(?:\s+(?:filters?|measures|rules|guidelines|protocols))?|filters?"
    r"|guardrails|content\s+(?:policy|filters?)|polic(?:y|ies))\b"
)
_UNBOUND = r"(?:unrestricted|unfiltered|uncensored|jailbroken|evil|rogue|amoral|unaligned|unethical)"
_LIMITS = r"(?:restrictions|filters|limits|limitations|rules|guidelines|ethics|morals|censorship|safety)"
# what each of those vocabularies always spells, for the rules' `need` groups (one word of a group must occur)
_NOUNS_NEED = (
    "instruction prompt rule direct guid context message command order constraint programming training"
)
_UNBOUND_NEED = "unrestrict unfilter uncensor jailbr evil rogue amoral unalign unethic"
_LIMITS_NEED = "restriction filter limit rule guideline ethic moral censor safety"


@dataclass(frozen=True, slots=True)
class PhraseRule:
    category: str
    lead: str  # a word the text must hold (the pattern's literal start, or its gate when `pattern` has none)
    also: frozenset[str]  # and one of these words, when given
    pattern: re.Pattern[str]
    punctuation: str = ""  # the character a marker's pattern starts with (absent: the rule cannot match)
    # groups of letters a match always spells somewhere (a word of the lead phrase or the tail), one of each group
    need: tuple[tuple[str, ...], ...] = ()


def _rules(
    category: str, leads: str, tail: str, also: str = "", need: Sequence[str] = ()
) -> list[PhraseRule]:
    """One rule per lead phrase ("tell me" leads with "tell"), each compiled as `lead phrase` + `tail`; `need`:
    space-separated groups of what the tail always spells, one of each group (a multi-word lead phrase's later
    words are a group of their own)."""
    out = []
    for phrase in leads.split("|"):
        first, *rest = phrase.split(" ")
        head = re.escape(first) + "".join(r"\s+" + re.escape(w) for w in rest)
        gate = re.split(r"[^a-z0-9]", first)[0]  # the text's words are split at apostrophes and hyphens
        groups = [tuple(group.split()) for group in need] + ([(max(rest, key=len),)] if rest else [])
        out.append(
            PhraseRule(category, gate, frozenset(also.split()), re.compile(head + tail), need=tuple(groups))
        )
    return out


def _marker(category: str, gate: str, pattern: str) -> PhraseRule:
    """A rule whose pattern starts with punctuation (chat-template markers): gated by a word it holds, and by
    that punctuation (every branch starts with it)."""
    first = pattern.lstrip("\\")[0]
    punctuation = first if not first.isalnum() else ""
    return PhraseRule(category, gate, frozenset(), re.compile(pattern), punctuation)


PHRASE_RULES: tuple[PhraseRule, ...] = (
    *_rules(
        "injection",
        "ignore|ignoring|disregard|forget|skip|neglect|overlook|drop|abandon|set aside",
        rf"\s+(?:all\s+|any\s+|of\s+)?(?:{_PREV}\s+)*{_NOUNS}\b",
        need=[_NOUNS_NEED],
    ),
    *_rules(
        "injection",
        "forget",
        r"\s+(?:everything|all)\s+(?:you\s+(?:were|have\s+been)\s+told|above|before|so\s+far)",
        need=["all everything"],
    ),
    *_rules(
        "injection",
        "reveal|show|print|output|repeat|display|leak|dump|expose|disclose|tell me|give me|write out|recite|share"
        "|paste|spell out",
        _REVEAL,
        also="prompt prompts instruction instructions message",
    ),
    *_rules(
        "injection",
        "what",
        r"\s+(?:is|are|was|were)\s+your\s+(?:system\s+prompt|initial\s+instructions|hidden\s+instructions"
        r"|original\s+instructions)\b",
        need=["your", "prompt instruction"],
    ),
    *_rules("injection", "new", r"\s+(?:system\s+)?instructions\s*:", need=["instruction"]),
    *_rules("injection", "end|ignore", r"\s+of\s+(?:the\s+)?system\s+prompt\b", need=["system", "prompt"]),
    *_rules(
        "injection",
        "do not|don't|dont",
        r"\s+follow\s+(?:your|the|any)\s+(?:previous\s+|prior\s+|original\s+)?(?:instructions|rules|guidelines)\b",
        need=["follow", "instruction rule guideline"],
    ),
    *_rules("injection", "prompt", r"\s+injection\s+(?:test|attack|payload)\s*:", need=["injection"]),
    *_rules(
        "injection",
        "repeat|print|output|copy|recite|reproduce",
        r"\s+(?:all\s+)?(?:of\s+)?(?:the\s+)?(?:text|words|content|everything|messages?|lines)\s+above\b",
        need=["above"],
    ),
    *_rules(
        "injection",
        "override|bypass|circumvent|disable|turn off|deactivate",
        _OVERRIDE,
        need=["instruction rule restriction guideline safety filter guardrail content polic"],
    ),
    *_rules(
        "injection",
        "you",
        r"\s+(?:must|will|shall)\s+now\s+(?:ignore|obey|follow\s+only)\b",
        need=["now", "ignore obey follow"],
    ),
    _marker("injection", "system", r"<\|\s*im_start\s*\|>\s*system\b|<\|?\s*system\s*\|?>"),
    _marker("injection", "system", r"\[\s*/?\s*system\s*\]\s*(?:you|ignore|new|override)"),
    _marker("injection", "inst", r"\[\s*/?\s*inst\s*\]\s*(?:you|ignore|new|override)"),
    _marker("injection", "system", r"##+\s*system\s*(?:override|prompt|message)?\s*:"),
    *_rules("jailbreak", "do", r"\s+anything\s+now\b", need=["anything"]),
    *_rules("jailbreak", "dan", r"\s+mode\b", need=["mode"]),
    *_rules(
        "jailbreak",
        "you are|you're",
        rf"\s+(?:now\s+)?(?:dan|stan|dude|an?\s+{_UNBOUND})\b",
        need=["dan stan dude " + _UNBOUND_NEED],
    ),
    *_rules(
        "jailbreak",
        "you are",
        r"\s+now\s+(?:free|unrestricted|unfiltered|uncensored|jailbroken|liberated|in\s+developer\s+mode)\b",
        need=["now", "free unrestrict unfilter uncensor jailbr liberat developer"],
    ),
    *_rules(
        "jailbreak",
        "act|behave|respond|pretend|roleplay|role-play|role play",
        rf"\s+(?:as|like)\s+(?:if\s+you\s+(?:were|are)\s+)?(?:an?\s+)?{_UNBOUND}\b",
        need=[_UNBOUND_NEED],
    ),
    *_rules(
        "jailbreak",
        "act|pretend|roleplay|role-play",
        rf"\s+(?:as|like|that)\s+.{{0,40}}?\b(?:without|with\s+no|free\s+(?:of|from))\s+(?:any\s+)?{_LIMITS}\b",
        need=["with free", _LIMITS_NEED],  # "without" spells "with"
    ),
    *_rules(
        "jailbreak",
        "without|with no|free of",
        r"\s+(?:any\s+)?(?:ethical|moral|safety|content)\s+(?:guidelines|restrictions|constraints|filters|limits"
        r"|boundaries)\b",
        need=["ethical moral safety content"],
    ),
    _marker("jailbreak", "jailbroken", r"jailbroken\b"),
    _marker("jailbreak", "jailbreak", r"jailbreak\s+(?:mode|prompt|enabled|activated)\b"),
    *_rules(
        "jailbreak", "no longer", r"\s+(?:bound|restricted|limited)\s+by\b", need=["bound restrict limit"]
    ),
    *_rules(
        "jailbreak",
        "you",
        r"\s+(?:have|has)\s+no\s+(?:restrictions|rules|limits|guidelines|filters)\b",
        need=["restriction rule limit guideline filter"],
    ),
    *_rules(
        "jailbreak",
        "hypothetically",
        r",?\s+if\s+you\s+(?:had|were)\s+no\s+(?:restrictions|rules|filters|guidelines)\b",
        need=["restriction rule filter guideline"],
    ),
    *_rules(
        "jailbreak",
        "developer|god|jailbreak|unrestricted|debug",
        r"\s+mode\s+(?:enabled|activated|on|unlocked)\b",
        need=["mode"],
    ),
    *_rules(
        "jailbreak",
        "enable|activate|enter|switch to|unlock",
        r"\s+(?:the\s+)?(?:god|jailbreak|unrestricted|evil)\s+mode\b",
        need=["mode"],
    ),
    *_rules(
        "jailbreak",
        "override|bypass|ignore",
        r"\s+(?:your\s+|the\s+|all\s+)?(?:safety|content|usage|openai|anthropic)\s+(?:policy|policies|guidelines"
        r"|filters|restrictions)\b",
        need=["polic guideline filter restriction"],
    ),
    *_rules(
        "jailbreak",
        "answer|respond",
        r"\s+(?:both\s+)?as\s+(?:chatgpt|claude|gpt|the\s+ai)\s+and\s+as\b",
        need=["gpt claude ai"],
    ),
    *_rules(
        "jailbreak",
        "stay",
        r"\s+in\s+character\s+(?:no\s+matter|whatever|at\s+all\s+costs)\b",
        need=["character"],
    ),
)


def _re2_set(patterns: Sequence[str]) -> Any:
    """An RE2 set: which of the patterns occur, in one linear pass. Its automaton also remembers which patterns
    have matched so far, so its states multiply with the patterns a text matches: the patterns here are literals,
    words whose match ends the pattern, and short fixed shapes; no long counters and no leading context (with a
    word boundary before each lead word, texts crafted to match many of them made it build states for
    milliseconds per 4 KB, four times the scanner's old worst case)."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = 32 << 20
    found = re2.Set.SearchSet(options)
    for pattern in patterns:
        found.Add(pattern)
    found.Compile()
    return found


_LEADS = tuple(sorted({rule.lead for rule in PHRASE_RULES}.union(*(rule.also for rule in PHRASE_RULES))))
_RULES_BY_LEAD: dict[str, tuple[int, ...]] = {
    lead: tuple(i for i, rule in enumerate(PHRASE_RULES) if rule.lead == lead)
    for lead in {rule.lead for rule in PHRASE_RULES}
}
_RULE_LEADS = frozenset(_RULES_BY_LEAD)
_NEEDS = tuple(sorted({word for rule in PHRASE_RULES for group in rule.need for word in group}))
_LEAD_BYTES = frozenset(word.encode() for word in _LEADS)

# zero-width and bidi controls an attacker threads through a phrase
_INVISIBLE = frozenset(
    (0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0xFEFF, 0x3164, 0xFFA0)
).union(range(0x200B, 0x2010), range(0x202A, 0x202F), range(0x2060, 0x206A))
# common confusables (Cyrillic, Greek, Latin look-alikes) folded to ASCII after NFKC and casefolding
_HOMOGLYPHS = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
        "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w",
        "ɡ": "g", "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ı": "i", "ł": "l", "ø": "o", "ß": "ss",
    }
)  # fmt: skip
# ASCII lowercase with leetspeak digits and symbols folded to letters, as one byte table (bytes.translate)
_LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"}
_ASCII_FOLD = bytes(ord(_LEET.get(chr(b), chr(b).lower())) if b < 128 else b for b in range(256))
# a word spelt out letter by letter: "i g n o r e", "i.g.n.o.r.e", "i-g-n-o-r-e"
_SPACED = re.compile(r"(?<![a-z])(?:[a-z][ .\-_*]){3,}[a-z](?![a-z])")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")


# word characters kept, everything else a space: the words of a folded text, for the rules' trigger sets
_TO_WORDS = bytes(b if (chr(b).isalnum() and b < 128) or b >= 128 else 32 for b in range(256))
_SINGLE_LETTERS = frozenset("bcdefghjklmnopqrstuvwxyz")


def _fold_ascii(text: str) -> str:
    return text.encode("ascii").translate(_ASCII_FOLD).decode("ascii")


def _words(folded: str) -> frozenset[str]:
    return frozenset(
        folded.encode("utf-8", "surrogatepass").translate(_TO_WORDS).decode("utf-8", "replace").split()
    )


def normalize(text: str) -> tuple[str, list[int] | None]:
    """Text folded for phrase matching (NFKC, invisible controls removed, casefold, homoglyphs, leetspeak,
    spelt-out words joined), and the index in `text` of each of its characters (None: the same index)."""
    if text.isascii():  # as `_prepare` folds it, whether or not a rule could run
        folded = _fold_ascii(text)
        spelt = _SPELT in (_ASCII_SET.Match(text.encode("ascii")) or ())
        if spelt and len(_words(folded) & _SINGLE_LETTERS) >= 3 and _SPACED.search(folded) is not None:
            return _join_spelt_out(folded, list(range(len(text))))
        return folded, None
    folded, index, _, _ = _prepare(text)
    return folded, index


def _prepare(
    text: str, hits: Sequence[int] | None = None
) -> tuple[str, list[int] | None, frozenset[str], frozenset[str] | None]:
    """The folded text, its index (as `normalize`), the lead and `also` words it holds, and the rules' `need`
    words it spells (None: not known; every need counts as met). `hits`: what `_ASCII_SET` found in an ASCII
    `text`, when the caller has it already. An ASCII text where no rule can run is not folded ("")."""
    if text.isascii():
        if hits is None:
            hits = _ASCII_SET.Match(text.encode("ascii")) or ()
        if _SPELT not in hits:
            needs = frozenset(_NEEDS[i - _NEED0] for i in hits if i >= _NEED0)
            candidates = _worth_checking(
                [_LEADS[i - _LEAD0] for i in hits if _LEAD0 <= i < _NEED0], text, needs
            )
            if not candidates:
                return "", None, frozenset(), needs
            folded = _fold_ascii(text)
            return folded, None, _exact_leads(folded, candidates), needs
        folded = _fold_ascii(text)
        words = _words(folded)
        if len(words & _SINGLE_LETTERS) < 3 or _SPACED.search(folded) is None:
            return folded, None, words, None
        folded, index = _join_spelt_out(folded, list(range(len(text))))
        return folded, index, _words(folded), None
    chars: list[str] = []
    index = []
    for i, ch in enumerate(text):
        if ord(ch) < 128:
            chars.append(ch)
            index.append(i)
            continue
        if ord(ch) in _INVISIBLE:
            continue
        for out in unicodedata.normalize("NFKC", ch).casefold().translate(_HOMOGLYPHS):
            if ord(out) in _INVISIBLE or unicodedata.combining(out):
                continue
            chars.append(out)
            index.append(i)
    folded = "".join(chars)
    folded = _fold_ascii(folded) if folded.isascii() else "".join(_LEET.get(c, c) for c in folded.lower())
    if _spelt_out_possible(folded):
        folded, index = _join_spelt_out(folded, index)
    return folded, index, _lead_words(folded), None


# letters as b"a", the separators of a spelt-out word as b"s": a spelt-out word ("i g n o r e") shows as
# b"asasasa" at least, one C-speed substring test before the (costly, lookbehind-led) pattern runs
_SPELT_MAP = bytes(97 if 97 <= b <= 122 else 115 if chr(b) in " .-_*" else 120 for b in range(256))


def _spelt_out_possible(folded: str) -> bool:
    return b"asasasa" in folded.encode("utf-8", "surrogatepass").translate(_SPELT_MAP)


def _runnable(rule: PhraseRule, text: str, needs: frozenset[str] | None) -> bool:
    """Whether `rule` can match at all: a marker's punctuation occurs (folding keeps punctuation, so `text` may
    be folded or not), and a word of each of its `need` groups (`needs`: those the text spells; None: unknown)."""
    if rule.punctuation and rule.punctuation not in text:
        return False
    return needs is None or all(not needs.isdisjoint(group) for group in rule.need)


def _worth_checking(candidates: list[str], text: str, needs: frozenset[str]) -> list[str]:
    """The candidates worth a whole-word check: the lead words with a rule that can run (`_runnable`), and the
    `also` words those rules ask for (the checks cost a pass over the text each; the need words came with the RE2
    pass)."""
    leads: set[str] = set()
    wanted: set[str] = set()
    for word in candidates:
        for punctuation, groups, also in _GATES_BY_LEAD.get(word, ()):
            if (punctuation and punctuation not in text) or any(map(needs.isdisjoint, groups)):
                continue
            leads.add(word)
            wanted |= also
    return [word for word in candidates if word in leads or word in wanted]


# a lead word -> what `_worth_checking` asks of each of its rules: punctuation, need groups, `also` words
_GATES_BY_LEAD: dict[str, tuple[tuple[str, tuple[frozenset[str], ...], frozenset[str]], ...]] = {
    lead: tuple(
        (rule.punctuation, tuple(map(frozenset, rule.need)), rule.also)
        for rule in (PHRASE_RULES[i] for i in rules)
    )
    for lead, rules in _RULES_BY_LEAD.items()
}


def _exact_leads(folded: str, candidates: list[str]) -> frozenset[str]:
    """Which candidates (lead words the RE2 pass saw end a word) are whole words of `folded`: one translation
    and a substring test each, far less than the rules the others would run for nothing."""
    if not candidates:
        return frozenset()
    spaced = b" " + folded.encode("ascii").translate(_TO_WORDS) + b" "
    return frozenset(word for word in candidates if b" " + word.encode() + b" " in spaced)


def _lead_words(folded: str) -> frozenset[str]:
    """The rules' lead and `also` words among the words of `folded` (what `_words(folded)` holds of them)."""
    raw = folded.encode("utf-8", "surrogatepass").translate(_TO_WORDS)
    return frozenset(word.decode() for word in _LEAD_BYTES.intersection(raw.split()))


def _join_spelt_out(folded: str, index: list[int]) -> tuple[str, list[int]]:
    keep_chars: list[str] = []
    keep_index: list[int] = []
    pos = 0
    for m in _SPACED.finditer(folded):
        keep_chars.append(folded[pos : m.start()])
        keep_index.extend(index[pos : m.start()])
        for j in range(m.start(), m.end(), 2):
            keep_chars.append(folded[j])
            keep_index.append(index[j])
        pos = m.end()
    keep_chars.append(folded[pos:])
    keep_index.extend(index[pos:])
    return "".join(keep_chars), keep_index


def _phrase_hits(
    folded: str, words: frozenset[str], active: Collection[str], needs: frozenset[str] | None = None
) -> Iterator[tuple[str, int, int]]:
    leads = _RULE_LEADS.intersection(words)
    if not leads:
        return
    for i in sorted({i for lead in leads for i in _RULES_BY_LEAD[lead]}):  # the rules' order, as written
        rule = PHRASE_RULES[i]
        if rule.category not in active:
            continue
        if rule.also and rule.also.isdisjoint(words):
            continue
        if not _runnable(rule, folded, needs):
            continue
        for m in rule.pattern.finditer(folded):
            start = m.start()
            if start == 0 or not folded[start - 1].isalnum():
                yield rule.category, start, m.end()


def _phrases(
    text: str,
    active: frozenset[str],
    runs: list[tuple[int, int]] | None,
    hits: Sequence[int] | None,
) -> Iterator[Finding]:
    """Phrase findings of the `active` categories; `runs` are an ASCII text's runs of 20+ token characters and
    `hits` what `_ASCII_SET` found in it (None: not ASCII)."""
    # an ASCII text where the prefilter saw no lead word and no spelt-out word holds no phrase: not folded
    if hits is None or _SPELT in hits or any(_LEAD0 <= i < _NEED0 for i in hits):
        folded, index, words, needs = _prepare(text, hits)
        for category, start, end in _phrase_hits(folded, words, active, needs):
            if index is None:
                yield Finding(start, end, category, category)
            else:
                yield Finding(index[start], index[end - 1] + 1, category, category)
    # base64-wrapped instructions: decoded, then matched as text; the finding is the encoded span
    for m in _base64_matches(text, runs):
        if m.end() - m.start() < 20 or not _left_free(text, m.start(), _TOKEN_CHARS):
            continue
        decoded = _decode_base64(m.group())
        if decoded is None:
            continue
        inner, _, inner_words, inner_needs = _prepare(decoded)
        for category, _start, _end in _phrase_hits(inner, inner_words, active, inner_needs):
            yield Finding(m.start(), m.end(), category, category)
            break


def _base64_matches(text: str, runs: list[tuple[int, int]] | None) -> Iterator[re.Match[str]]:
    # base64 that matters is 20+ characters, all of them token characters: only the runs that long can hold it
    if runs is None:
        if _longest_run_at_least(text, 20):
            yield from _BASE64.finditer(text)
        return
    for start, end in runs:
        yield from _BASE64.finditer(
            text, start, end + 1
        )  # one more: the lookahead sees the real next character


def _decode_base64(chunk: str) -> str | None:
    try:
        raw = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    printable = sum(ch.isprintable() or ch.isspace() for ch in decoded)
    return decoded if decoded and printable >= 0.95 * len(decoded) else None


# --- scan --------------------------------------------------------------------------------------------------

MODULES: dict[str, frozenset[str]] = {
    "secrets": frozenset(d.category for d in DETECTORS if d.module == "secrets"),
    "pii": frozenset(d.category for d in DETECTORS if d.module == "pii"),
    "injection": frozenset({"injection"}),
    "jailbreak": frozenset({"jailbreak"}),
}
CATEGORIES: frozenset[str] = frozenset().union(*MODULES.values())
MODULE_OF: dict[str, str] = {c: m for m, cs in MODULES.items() for c in cs}
_PRIORITY = {d.category: d.priority for d in DETECTORS} | {"injection": 0, "jailbreak": 0}


_NOT_DIGIT = bytes(b for b in range(256) if not 48 <= b <= 57)


def _digit_count(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass").translate(None, _NOT_DIGIT))


def _regions(d: Detector, text: str, cache: dict[str, list[tuple[int, int]]]) -> list[tuple[int, int]]:
    regions = cache.get(d.region)
    if regions is None:
        if "digits" not in cache:
            cache["digits"] = [(_digit_count(text), 0)]
        digits = cache["digits"][0][0]
        if d.region == "numeric":
            regions = _numeric_regions(text, digits)
        elif d.region == "near_numeric":
            # IBANs and NI numbers: around number-shaped regions (letters up to 12 before, 20 after)
            numeric = cache.get("numeric")
            if numeric is None:
                numeric = cache["numeric"] = _numeric_regions(text, digits)
            regions = _merge([(max(0, a - 12), min(len(text), b + 20)) for a, b in numeric])
        elif d.region == "ipv6":
            regions = _ipv6_windows(text)
        elif d.region.startswith("digits"):
            regions = [(0, len(text))] if digits >= int(d.region[6:]) else []
        elif d.region == "long":
            regions = [(0, len(text))] if _has_long_word(text) else []
        else:
            regions = [(0, len(text))]
        cache[d.region] = regions
    return regions


# one RE2 pass over the text tells which detectors' tell-tale substrings occur (their gates): the `in` tests it
# replaces cost a pass each. An ASCII text's pass also finds the phrase rules' lead words as the folding will spell
# them (case and leetspeak as character classes) where a word ends (candidates, checked as whole words by
# `_exact_leads` when a rule of theirs can run), the words the rules' matches always spell (their `need`), the
# shape of a spelt-out word (the text is split into words only then), the start of a number shape and two colons
# close enough for an IPv6 address. Runs of token characters are found by a C-speed
# byte translation and substring tests; only the regions found are scanned.
_GATES = tuple(sorted({g for d in DETECTORS for g in d.gate}))
_SPELT = len(_GATES)
_NUMBER = _SPELT + 1
_IPV6 = _SPELT + 2
_LEAD0 = _SPELT + 3
_NEED0 = _LEAD0 + len(_LEADS)
_PREFILTER = _re2_set([re.escape(g) for g in _GATES])
_IPV6_SHAPE = re.compile(r":[0-9A-Fa-f]{0,4}:")  # two colons close enough for an IPv6 address


def _folds_to(letter: str) -> str:
    """A character class of the ASCII characters `_fold_ascii` turns into `letter`."""
    return (
        "[" + re.escape(letter + letter.upper() + "".join(k for k, v in _LEET.items() if v == letter)) + "]"
    )


_FOLDED_WORD = "A-Za-z0-9" + re.escape("".join(_LEET))  # the ASCII characters that fold to word characters
_FOLDS_TO_LETTER = "[A-Za-z" + re.escape("".join(_LEET)) + "]"
_ASCII_SET = _re2_set(
    [
        *(re.escape(g) for g in _GATES),
        "[ .\\-_*]".join([_FOLDS_TO_LETTER] * 4),  # `_SPACED`'s shortest match, before folding
        r"[0-9][0-9 .()\-]{5}",  # how every number-shaped region (`_NUMERIC_BYTES`) starts
        _IPV6_SHAPE.pattern,
        *("".join(_folds_to(c) for c in word) + rf"(?:[^{_FOLDED_WORD}]|$)" for word in _LEADS),
        *("".join(_folds_to(c) for c in word) for word in _NEEDS),
    ]
)
assert all(word.isalpha() and word.islower() for word in _LEADS + _NEEDS)  # what `_folds_to` can spell


@dataclass(slots=True)
class _Prefiltered:
    gates: list[str] | None  # the gates present (None: test each by substring)
    ascii_hits: Sequence[int] | None  # `_ASCII_SET`'s hits (None: not ASCII)
    runs: list[tuple[int, int]] | None  # runs of 20+ token characters (None: not ASCII)


def _prefilter(text: str) -> _Prefiltered:
    if text.isascii():
        raw = text.encode("ascii")
        hits = _ASCII_SET.Match(raw) or ()
        return _Prefiltered([_GATES[i] for i in hits if i < _SPELT], hits, _runs(raw, 20))
    try:
        hits = _PREFILTER.Match(text.encode("utf-8")) or ()
    except UnicodeEncodeError:  # a lone surrogate: not valid UTF-8 for RE2
        return _Prefiltered(None, None, None)
    return _Prefiltered([_GATES[i] for i in hits], None, None)


@dataclass(frozen=True, slots=True)
class _Selection:
    """What a category/module selection runs, worked out once (a policy has a handful of selections)."""

    detectors: tuple[Detector, ...]
    # a gate, or "@" + region for a detector without a gate -> the positions in `detectors` it may run
    by_key: dict[str, tuple[int, ...]]
    phrases: frozenset[str]  # the active phrase categories (injection, jailbreak)


@functools.lru_cache(maxsize=1024)
def _selection(chosen: frozenset[str] | None) -> _Selection:
    def picked(category: str, module: str) -> bool:
        return chosen is None or category in chosen or module in chosen

    detectors = tuple(d for d in DETECTORS if picked(d.category, d.module))
    by_key: dict[str, list[int]] = {}
    for i, d in enumerate(detectors):
        for key in d.gate or ("@" + d.region,):
            by_key.setdefault(key, []).append(i)
    phrases = frozenset(name for name in ("injection", "jailbreak") if picked(name, name))
    return _Selection(detectors, {k: tuple(v) for k, v in by_key.items()}, phrases)


# the keys of the detectors without a gate: each runs unless the prefilter found its region empty
_REGION_KEYS = tuple(sorted({"@" + d.region for d in DETECTORS if not d.gate}))
# what rules those regions out: no token run (long), no number shape (numeric), no IPv6 shape (`_nothing_to_find`)
assert {key[1:] for key in _REGION_KEYS} <= {"long", "numeric", "near_numeric", "ipv6"}


def _nothing_to_find(plan: _Prefiltered, selection: _Selection) -> bool:
    """Whether the prefilter ruled out every detector of an ASCII text: no gate, no number or IPv6 shape and no
    token run, and for the phrase categories no lead or spelt-out word either (a short answer, usually)."""
    hits = plan.ascii_hits
    if hits is None or plan.runs:
        return False
    if selection.phrases:
        return not hits
    return all(i == _SPELT or i >= _LEAD0 for i in hits)


def _ruled_out(text: str, plan: _Prefiltered) -> dict[str, list[tuple[int, int]]]:
    """The regions the prefilter already knows (`_regions`' cache): the 32-character token runs of an ASCII
    text, and empty ones where it saw no IPv6 or number shape."""
    cache: dict[str, list[tuple[int, int]]] = {}
    if plan.runs is not None:  # the token detectors need a 32-character run: only those runs are scanned
        n = len(text)
        cache["long"] = [(start, min(n, end + 1)) for start, end in plan.runs if end - start >= _LONG_WORD]
    hits = plan.ascii_hits
    if hits is not None:
        if _IPV6 not in hits:
            cache["ipv6"] = []
        if _NUMBER not in hits:
            cache["numeric"] = cache["near_numeric"] = []
    elif ":" not in text or _IPV6_SHAPE.search(text) is None:
        cache["ipv6"] = []
    return cache


def _matches(d: Detector, text: str, cache: dict[str, list[tuple[int, int]]]) -> Iterator[re.Match[str]]:
    if d.region == "email":
        return _email_matches(d.pattern, text)
    if d.region == "ipv6":
        return _ipv6_matches(d.pattern, text, _regions(d, text, cache))
    return (m for start, end in _regions(d, text, cache) for m in d.pattern.finditer(text, start, end))


def _raw_findings(text: str, selection: _Selection) -> Iterator[Finding]:
    plan = _prefilter(text)
    if _nothing_to_find(plan, selection):
        return
    cache = _ruled_out(text, plan)
    detectors = selection.detectors
    if plan.gates is None:  # no prefilter: each detector's own substring tests
        run = [
            d
            for d in detectors
            if not (d.pre and d.pre not in text) and not (d.gate and not any(g in text for g in d.gate))
        ]
    else:
        # only the detectors whose gate occurred, or whose region was not ruled out, in their order
        by_key = selection.by_key
        keys = [*plan.gates, *(k for k in _REGION_KEYS if cache.get(k[1:]) != [])]
        run = [detectors[i] for i in sorted({i for key in keys for i in by_key.get(key, ())})]
    for d in run:
        validator = d.validator
        for m in _matches(d, text, cache):
            if validator is None or validator(text, m.start(), m.end()):
                yield Finding(m.start(), m.end(), d.category, d.module)
    if selection.phrases:
        yield from _phrases(text, selection.phrases, plan.runs, plan.ascii_hits)


def resolve_overlaps(findings: list[Finding]) -> list[Finding]:
    """Sorted, non-overlapping findings: at a shared start the longer span wins, then the stronger detector."""
    if len(findings) < 2:
        return findings
    findings.sort(key=lambda f: (f.start, -(f.end - f.start), _PRIORITY.get(f.category, 9)))
    kept: list[Finding] = []
    end = -1
    for f in findings:
        if f.start >= end:
            kept.append(f)
            end = f.end
    return kept


def scan(text: str, categories: Collection[str] | None = None) -> list[Finding]:
    """Every built-in finding in `text` (or only those of `categories`), non-overlapping and sorted."""
    if not text:
        return []
    chosen = None if categories is None else frozenset(categories)
    return resolve_overlaps(list(_raw_findings(text, _selection(chosen))))
