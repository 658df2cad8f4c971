"""Cleaning: the one ``clean_text`` every consumer uses (data preparation, evaluation).

The upstream texts come from PDFs. Each rule is a function ``text -> (new text,
characters removed or replaced)``; ``CLEANING_RULES`` lists them in the order
``clean_text`` applies them, and ``clean_text_with_report`` also returns each rule's
count. Changing a rule changes the prepared bytes: bump ``CLEANING_VERSION`` so that
``prepare_dataset`` rebuilds datasets prepared with the old rules.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

CLEANING_VERSION = 1


def _edit_size(old: str, new: str) -> int:
    """Characters removed or replaced going from old to new (common prefix and suffix ignored)."""
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    end = 0
    while end < min(len(old), len(new)) - start and old[-1 - end] == new[-1 - end]:
        end += 1
    return max(len(old), len(new)) - start - end


def _subn(pattern: re.Pattern, replacement: str | Callable, text: str) -> tuple[str, int]:
    changed = 0

    def replace(match: re.Match) -> str:
        nonlocal changed
        new = replacement(match) if callable(replacement) else match.expand(replacement)
        changed += _edit_size(match.group(0), new)
        return new

    return pattern.sub(replace, text), changed


_LINE_BREAKS = re.compile(r"\r\n?|[\ufeff\u00ad\u200b]")


def normalize_unicode(text: str) -> tuple[str, int]:
    """NFC composition; CR/CRLF line ends become LF; BOM, soft hyphens and zero-width spaces go."""
    text, changed = _subn(_LINE_BREAKS, lambda m: "\n" if m.group(0).startswith("\r") else "", text)
    composed = unicodedata.normalize("NFC", text)
    if composed != text:
        changed += max(len(text) - len(composed), sum(a != b for a, b in zip(text, composed)))
    return composed, changed


_ODD_SPACES = re.compile(r"[\t\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_SPACE_RUNS = re.compile(r" {2,}")
_LINE_EDGE_SPACES = re.compile(r"^ +| +$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> tuple[str, int]:
    """Tabs and Unicode spaces become spaces; runs of spaces collapse; lines are stripped; at most one blank line."""
    total = 0
    for pattern, replacement in (
        (_ODD_SPACES, " "),
        (_SPACE_RUNS, " "),
        (_LINE_EDGE_SPACES, ""),
        (_BLANK_RUNS, "\n\n"),
    ):
        text, changed = _subn(pattern, replacement, text)
        total += changed
    stripped = text.strip("\n")
    return stripped, total + len(text) - len(stripped)


_PAGE_NUMBER_LINE = re.compile(r"^[-–—]? ?\d{1,3} ?[-–—]?(?:\n|\Z)", re.M)


def drop_page_numbers(text: str) -> tuple[str, int]:
    """Remove lines that hold only a page number (1–3 digits, maybe dashed: "- 12 -").

    Four-digit lines are kept: in this corpus they are years heading poems and chronicles.
    """
    result, changed = _subn(_PAGE_NUMBER_LINE, "", text)
    if not text.endswith("\n") and result.endswith("\n"):  # a number on the last line leaves its line break
        changed += len(result) - len(result.rstrip("\n"))
        result = result.rstrip("\n")
    return result, changed


def drop_running_headers(text: str, min_repeats: int = 3) -> tuple[str, int]:
    """Remove later copies of the title line when it repeats like a page header (>= min_repeats times).

    Only the title is considered: other repeated lines (a play's speaker names, a
    poem's refrain) are content.
    """
    lines = text.split("\n")
    title_index = next((i for i, line in enumerate(lines) if line.strip()), None)
    if title_index is None:
        return text, 0
    title = lines[title_index].strip()
    repeats = [i for i in range(title_index + 1, len(lines)) if lines[i].strip() == title]
    if len(repeats) < min_repeats or not 3 <= len(title) <= 80:
        return text, 0
    drop = set(repeats)
    kept = [line for i, line in enumerate(lines) if i not in drop]
    return "\n".join(kept), sum(len(lines[i]) + 1 for i in drop)


_HYPHEN_BREAK = re.compile(r"(\w+)-\n(\w+)")
_WORD = re.compile(r"\w+")
_HYPHENATED_PAIR = re.compile(r"(?=\b(\w+-\w+))")


def rejoin_hyphenated_words(text: str) -> tuple[str, int]:
    """Rejoin a word broken by a hyphen at a line end.

    Portuguese hyphens are mostly real (``disse-lhe``, ``bem-aventurança``), so the
    hyphen is dropped only when the joined word occurs elsewhere in the text and the
    hyphenated form does not (``compa-/ração`` → ``comparação``); otherwise the word is
    rejoined with its hyphen (``calçou-/as`` → ``calçou-as``).
    """
    words = {w.lower() for w in _WORD.findall(text)}
    hyphenated = {w.lower() for w in _HYPHENATED_PAIR.findall(text.replace("-\n", "\x00"))}

    def join(match: re.Match) -> str:
        head, tail = match.group(1), match.group(2)
        joined = head + tail
        if joined.lower() in words and f"{head}-{tail}".lower() not in hyphenated:
            return joined
        return f"{head}-{tail}"

    return _subn(_HYPHEN_BREAK, join, text)


_DIALOGUE_START = re.compile(r"^[-–—]")


def join_wrapped_lines(text: str, min_fill: float = 0.8, min_width: int = 60) -> tuple[str, int]:
    """Join the PDF's hard-wrapped lines into paragraphs.

    The wrap width is estimated per text as the 90th percentile of its line lengths;
    a line at least ``min_fill`` of that width was wrapped and continues on the next
    line, unless the next line opens a dialogue (a dash) or is a heading (no lowercase
    letters). Texts whose width is under ``min_width`` (verse, lists) are left alone.
    Each paragraph ends up on one line.
    """
    lines = text.split("\n")
    lengths = sorted(len(line) for line in lines if line)
    if not lengths:
        return text, 0
    width = lengths[int(0.9 * (len(lengths) - 1))]
    if width < min_width:
        return text, 0
    threshold = min_fill * width
    pieces, joined = [], 0
    for line, following in zip(lines, lines[1:]):
        pieces.append(line)
        continues = (
            len(line) >= threshold
            and following
            and not _DIALOGUE_START.match(following)
            and any(ch.islower() for ch in following)
        )
        pieces.append(" " if continues else "\n")
        joined += bool(continues)
    pieces.append(lines[-1])
    return "".join(pieces), joined


CLEANING_RULES: tuple[tuple[str, Callable[[str], tuple[str, int]]], ...] = (
    ("normalize_unicode", normalize_unicode),
    ("normalize_whitespace", normalize_whitespace),
    ("drop_page_numbers", drop_page_numbers),
    ("drop_running_headers", drop_running_headers),
    ("rejoin_hyphenated_words", rejoin_hyphenated_words),
    ("join_wrapped_lines", join_wrapped_lines),
)


def clean_text_with_report(text: str) -> tuple[str, dict[str, int]]:
    """clean_text, plus the number of characters each rule removed or replaced."""
    report = {}
    for name, rule in CLEANING_RULES:
        text, report[name] = rule(text)
    return text, report


def clean_text(text: str) -> str:
    """The one cleaning every consumer uses (data prep, evaluation): all CLEANING_RULES in order."""
    return clean_text_with_report(text)[0]
