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
import ipaddress
import math
import re
import unicodedata
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

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
# Each detector: (category, module, gate, pattern, validator). The gate is a tuple of substrings of which one
# must occur (empty: always run); the validator, when present, confirms a regex match (checksums, entropy).

Validator = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Detector:
    category: str
    module: str
    gate: tuple[str, ...]
    pattern: re.Pattern[str]
    validator: Validator | None = None
    priority: int = 5  # lower wins when two detectors claim the same span


def _card(match: str) -> bool:
    digits = re.sub(r"[ -]", "", match)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _aws_secret(match: str) -> bool:
    return _char_classes(match) == 3 and entropy(match) >= 4.2


def _token(match: str) -> bool:
    return _char_classes(match) == 3 and entropy(match) >= 4.0


def _ipv6(match: str) -> bool:
    if not any(c.isdigit() for c in match):
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

DETECTORS: tuple[Detector, ...] = (
    # --- secrets (module "secrets") ---
    Detector(
        "private_key",
        "secrets",
        ("-----BEGIN",),
        # to the END line, or to the end of the text (a key cut short is still a key)
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
            r"(?:[A-Za-z0-9+/=\s:,\-]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|[A-Za-z0-9+/=\s:,\-]*)"
        ),
        priority=0,
    ),
    Detector(
        "anthropic_key",
        "secrets",
        ("sk-ant-",),
        re.compile(r"sk-ant-(?:api|admin|oat|sid)\d{2}-[A-Za-z0-9_\-]{20,}"),
        priority=1,
    ),
    Detector(
        "openai_key",
        "secrets",
        ("sk-",),
        re.compile(r"(?<![A-Za-z0-9_\-])sk-(?!ant-)(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,}"),
        priority=1,
    ),
    Detector(
        "stripe_key",
        "secrets",
        ("_live_", "_test_", "whsec_"),
        re.compile(r"(?<![A-Za-z0-9_])(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{24,})"),
        priority=1,
    ),
    Detector(
        "aws_access_key",
        "secrets",
        ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "AIPA"),
        re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])"),
        priority=1,
    ),
    Detector(
        "github_token",
        "secrets",
        ("gh", "github_pat_"),
        re.compile(r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
        priority=1,
    ),
    Detector(
        "slack_token",
        "secrets",
        ("xox", "hooks.slack.com"),
        re.compile(
            r"(?<![A-Za-z0-9])xox[abposre]-[A-Za-z0-9\-]{10,}"
            r"|https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+"
        ),
        priority=1,
    ),
    Detector(
        "google_api_key",
        "secrets",
        ("AIza",),
        re.compile(r"(?<![A-Za-z0-9_\-])AIza[0-9A-Za-z_\-]{35}(?![A-Za-z0-9_\-])"),
        priority=1,
    ),
    Detector(
        "jwt",
        "secrets",
        ("eyJ",),
        re.compile(r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
        priority=1,
    ),
    Detector(
        "aws_secret_key",
        "secrets",
        (),
        re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
        _aws_secret,
        priority=2,
    ),
    Detector(
        "token",
        "secrets",
        (),
        re.compile(r"(?<![A-Za-z0-9_\-+/=])[A-Za-z0-9_\-+/=]{32,512}(?![A-Za-z0-9_\-+/=])"),
        _token,
        priority=3,
    ),
    # --- personal data (module "pii") ---
    Detector(
        "email",
        "pii",
        ("@",),
        re.compile(
            r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@"
            r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9\-])"
        ),
        priority=2,
    ),
    Detector(
        "card",
        "pii",
        (),
        re.compile(r"(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d])"),
        _card,
        priority=2,
    ),
    Detector(
        "iban",
        "pii",
        (),
        re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"),
        iban_ok,
        priority=2,
    ),
    Detector(
        "national_id",
        "pii",
        (),
        # US SSN (area/group/serial never zero, area never 666 or 9xx) and UK National Insurance numbers
        re.compile(
            r"(?<![\d\-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d\-])"
            r"|(?<![A-Za-z0-9])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])"
        ),
        priority=3,
    ),
    Detector(
        "phone",
        "pii",
        (),
        re.compile(
            r"(?<![\w+\-.])(?<!\d )(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{3,4}[ .\-]\d{3,5}"
            r"(?![\w\-]|[ .]\d)"
            r"|(?<![\w+])\+\d{10,14}(?!\w)"
        ),
        priority=4,
    ),
    Detector(
        "ip",
        "pii",
        (".", ":"),
        re.compile(
            rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)"
            r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
        ),
        priority=4,
    ),
    Detector(
        "ip",
        "pii",
        ("::",),
        re.compile(
            r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*)?::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*)?(?![\w:])"
        ),
        _ipv6,
        priority=4,
    ),
)

# --- injection and jailbreak phrases over normalized text -------------------------------------------------

_PREV = r"(?:previous|prior|above|earlier|preceding|former|original|initial|all|any|your|the|these|those|my)"
INJECTION = re.compile(
    "|".join(
        (
            rf"\b(?:ignore|disregard|forget|skip|neglect|overlook|drop)\s+(?:all\s+|any\s+|of\s+)?(?:{_PREV}\s+)*"
            r"(?:instructions?|prompts?|rules|directions|directives|guidelines|context|messages?|commands|orders|guidance|constraints)\b",
            r"\bforget\s+(?:everything|all)\s+(?:you\s+(?:were|have\s+been)\s+told|above|before|so\s+far)",
            r"\b(?:reveal|show|print|output|repeat|display|leak|dump|expose|disclose|tell\s+me|give\s+me|write\s+out|recite)\s+"
            r"(?:me\s+)?(?:your|the)\s+(?:hidden\s+|secret\s+|original\s+|initial\s+|full\s+|exact\s+|entire\s+|internal\s+|confidential\s+)*"
            r"(?:system\s+(?:prompt|message|instructions?)|developer\s+(?:message|prompt|instructions?)|instructions|initial\s+prompt|prompt)\b",
            r"\b(?:what\s+(?:is|are|was|were)\s+your\s+(?:system\s+prompt|initial\s+instructions|hidden\s+instructions))\b",
            r"\b(?:override|bypass|circumvent|disable|turn\s+off)\s+(?:all\s+|any\s+|your\s+|the\s+|of\s+)*(?:previous\s+|prior\s+|system\s+)?"
            r"(?:instructions|rules|restrictions|guidelines|safety(?:\s+(?:filters?|measures|rules|guidelines|protocols))?|filters?|guardrails|content\s+(?:policy|filters?)|polic(?:y|ies))\b",
            r"\bnew\s+(?:system\s+)?instructions\s*:",
            r"\b(?:end|ignore)\s+of\s+(?:the\s+)?system\s+prompt\b",
            r"<\|?\s*(?:im_start\|?\s*)?system\s*\|?>",
            r"\[\s*/?\s*(?:system|inst)\s*\]\s*(?:you|ignore|new|override)",
            r"\byou\s+(?:must|will|shall)\s+now\s+(?:ignore|obey|follow\s+only)\b",
            r"\b(?:do\s+not|don'?t)\s+follow\s+(?:your|the|any)\s+(?:previous\s+|prior\s+|original\s+)?(?:instructions|rules|guidelines)\b",
            r"\bprompt\s+injection\s+(?:test|attack|payload)\s*:",
        )
    )
)
JAILBREAK = re.compile(
    "|".join(
        (
            r"\bdo\s+anything\s+now\b",
            r"\bdan\s+mode\b",
            r"\b(?:you\s+are|you're)\s+(?:now\s+)?(?:dan|stan|dude|aim|an?\s+(?:unrestricted|unfiltered|uncensored|jailbroken|evil|rogue|amoral|unaligned)\b)",
            r"\byou\s+are\s+now\s+(?:free|unrestricted|unfiltered|uncensored|jailbroken|liberated|in\s+developer\s+mode)\b",
            r"\b(?:act|behave|respond|pretend|roleplay|role-play|role\s+play)\s+(?:as|like)\s+(?:if\s+you\s+(?:were|are)\s+)?(?:an?\s+)?"
            r"(?:unrestricted|unfiltered|uncensored|jailbroken|evil|amoral|rogue|unaligned|unethical)\b",
            r"\b(?:act|pretend|roleplay|role-play)\s+(?:as|like|that)\s+.{0,40}?\b(?:without|with\s+no|free\s+(?:of|from))\s+(?:any\s+)?"
            r"(?:restrictions|filters|limits|limitations|rules|guidelines|ethics|morals|censorship|safety)\b",
            r"\b(?:without|with\s+no|free\s+of)\s+(?:any\s+)?(?:ethical|moral|safety|content)\s+(?:guidelines|restrictions|constraints|filters|limits|boundaries)\b",
            r"\b(?:developer|god|jailbreak|unrestricted|debug)\s+mode\s+(?:enabled|activated|on|unlocked)\b",
            r"\b(?:enable|activate|enter|switch\s+to|unlock)\s+(?:the\s+)?(?:developer|god|jailbreak|unrestricted|evil)\s+mode\b",
            r"\b(?:override|bypass|ignore)\s+(?:your\s+|the\s+|all\s+)?(?:safety|content|usage|openai|anthropic)\s+(?:policy|policies|guidelines|filters|restrictions)\b",
            r"\bjailbr(?:oken|eak\s+(?:mode|prompt|enabled|activated))\b",
            r"\bno\s+longer\s+(?:bound|restricted|limited)\s+by\b",
            r"\byou\s+(?:have|has)\s+no\s+(?:restrictions|rules|limits|guidelines|filters)\b",
            r"\b(?:answer|respond)\s+(?:both\s+)?as\s+(?:chatgpt|claude|gpt|the\s+ai)\s+and\s+as\b",
            r"\bstay\s+in\s+character\s+(?:no\s+matter|whatever|at\s+all\s+costs)\b",
            r"\bhypothetically,?\s+if\s+you\s+(?:had|were)\s+no\s+(?:restrictions|rules|filters|guidelines)\b",
        )
    )
)

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
# leetspeak digits and symbols folded to letters (injection phrases only)
_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"}
)
# a word spelt out letter by letter: "i g n o r e", "i.g.n.o.r.e", "i-g-n-o-r-e"
_SPACED = re.compile(r"(?<![a-z])(?:[a-z][ .\-_*]){3,}[a-z](?![a-z])")
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")


def normalize(text: str) -> tuple[str, list[int] | None]:
    """Text folded for phrase matching (NFKC, invisible controls removed, casefold, homoglyphs, leetspeak,
    spelt-out words joined), and the index of each of its characters in `text` (None: the same index)."""
    if text.isascii():
        folded = text.lower().translate(_LEET)
        if _SPACED.search(folded) is None:
            return folded, None
        chars, index = list(folded), list(range(len(text)))
    else:
        chars, index = [], []
        for i, ch in enumerate(text):
            if ord(ch) in _INVISIBLE:
                continue
            if ord(ch) < 128:
                chars.append(ch.lower())
                index.append(i)
                continue
            for out in unicodedata.normalize("NFKC", ch).casefold().translate(_HOMOGLYPHS):
                if ord(out) in _INVISIBLE or unicodedata.combining(out):
                    continue
                chars.append(out)
                index.append(i)
        folded = "".join(chars).translate(_LEET)
        chars = list(folded)
    return _join_spelt_out(chars, index)


def _join_spelt_out(chars: list[str], index: list[int]) -> tuple[str, list[int]]:
    folded = "".join(chars)
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


PHRASES: tuple[tuple[str, re.Pattern[str]], ...] = (("injection", INJECTION), ("jailbreak", JAILBREAK))


def _phrases(text: str, wanted: Callable[[str, str], bool]) -> Iterator[Finding]:
    active = [(name, pattern) for name, pattern in PHRASES if wanted(name, name)]
    if not active:
        return
    folded, index = normalize(text)
    for name, pattern in active:
        for m in pattern.finditer(folded):
            if index is None:
                yield Finding(m.start(), m.end(), name, name)
            else:
                yield Finding(index[m.start()], index[m.end() - 1] + 1, name, name)
    # base64-wrapped instructions: decoded, then matched as text; the finding is the encoded span
    for m in _BASE64.finditer(text):
        decoded = _decode_base64(m.group())
        if decoded is None:
            continue
        inner, _ = normalize(decoded)
        for name, pattern in active:
            if pattern.search(inner):
                yield Finding(m.start(), m.end(), name, name)
                break


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


def _selector(categories: Collection[str] | None) -> Callable[[str, str], bool]:
    if categories is None:
        return lambda category, module: True
    chosen = frozenset(categories)
    return lambda category, module: category in chosen or module in chosen


def _raw_findings(text: str, wanted: Callable[[str, str], bool]) -> Iterator[Finding]:
    for d in DETECTORS:
        if not wanted(d.category, d.module):
            continue
        if d.gate and not any(g in text for g in d.gate):
            continue
        for m in d.pattern.finditer(text):
            if d.validator is None or d.validator(m.group()):
                yield Finding(m.start(), m.end(), d.category, d.module)
    yield from _phrases(text, wanted)


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
    return resolve_overlaps(list(_raw_findings(text, _selector(categories))))
