"""Personal-data scrubbing before anything leaves the feedback store.

A small tested module rather than Presidio/scrubadub: both need NLP models or hubs that are not
reachable offline here, and the kinds we must catch (emails, phones, card numbers, IBANs) are
pattern-shaped. Card numbers are confirmed with the Luhn checksum and IBANs with mod-97, so order
numbers and prices survive.

Every pattern runs in time linear in the text: each quantifier is bounded (an e-mail's local part
is at most 64 characters, a domain label 63, an IBAN 34) and a match may only start where the
previous character cannot continue it, so a long run of the same character is tried once, not from
every position (tests/test_pii_limits.py measures each pattern's worst case on 8,000 characters).
Use ``clean`` on user text: it normalises first (full-width digits, zero-width characters that
split a number) so the patterns see what a reader sees.
"""

from __future__ import annotations

import re

from tuneloop.data.text import normalize

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")
# lower case and hyphens too: people type "de89-3704-0044-..." (mod-97 still has to hold)
IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]{4}){2,7}(?:[ -]?[A-Za-z0-9]{1,4})?(?![A-Za-z0-9])"
)
# digits glued to letters still count ("card4111111111111111", "call+4915112345678now"): only digits may not touch
CARD = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?!\d)")
PHONE = re.compile(r"(?<![\d+])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,4}\)?){2,5}(?!\d)")
# digit runs shaped like calendar dates are kept: answers need them and the phone pattern matches them
DATE = re.compile(
    r"(?:19|20)\d{2}([-.])(?:0?[1-9]|1[0-2])\1(?:0?[1-9]|[12]\d|3[01])|(?:0?[1-9]|[12]\d|3[01])([-.])(?:0?[1-9]|1[0-2])\2(?:19|20)\d{2}"
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _iban_ok(candidate: str) -> bool:
    compact = candidate.replace(" ", "").replace("-", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


_TOKEN = re.compile(r"[0-9A-Za-z-]{0,64}")
_HEX_WORD = re.compile(r"[0-9a-fA-F-]+")


HASH_LENGTHS = (32, 40, 64)  # hex UUIDs, SHA-1, SHA-256: an IBAN is 15-34 characters, LC's 32 the only clash


def _in_identifier(match: re.Match, reach: int = 64, lengths: tuple[int, ...] | None = None) -> bool:
    """Whether the match lies inside a hex identifier (a hash, a UUID, a request id): numbers may be glued
    to words, but a run of digits inside ``9f86d0818884c7d6...`` is no phone or card number. With
    ``lengths``, only identifiers of those lengths (without dashes) count. Looks at most ``reach``
    characters either side, so a long text costs a bounded amount per match."""
    text, (start, end) = match.string, match.span()
    before = _TOKEN.match(text[max(0, start - reach) : start][::-1]).group()[::-1]  # read leftwards from the match
    token = before + match.group() + _TOKEN.match(text, end, min(len(text), end + reach)).group()
    if lengths is not None and len(token.replace("-", "")) not in lengths:
        return False
    return len(token) >= 16 and _HEX_WORD.fullmatch(token) is not None and not token.replace("-", "").isdigit()


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group())
    if _in_identifier(match):
        return match.group()
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn_ok(digits) else match.group()


def _phone(match: re.Match) -> str:
    # precision is traded for recall on purpose: a bare 7-15 digit run may be an order number, but a
    # leaked phone number cannot be taken back
    digits = re.sub(r"\D", "", match.group())
    if DATE.fullmatch(match.group()) or _in_identifier(match):
        return match.group()
    return "[PHONE]" if 7 <= len(digits) <= 15 else match.group()


def scrub(text: str) -> str:
    """Replace personal data with typed placeholders ([EMAIL], [IBAN], [CARD], [PHONE])."""
    text = EMAIL.sub("[EMAIL]", text)
    text = IBAN.sub(
        lambda m: "[IBAN]" if _iban_ok(m.group()) and not _in_identifier(m, lengths=HASH_LENGTHS) else m.group(), text
    )
    text = CARD.sub(_card, text)
    return PHONE.sub(_phone, text)


def clean(text: str) -> str:
    """Normalised and scrubbed: what curation, the shadow log and drift windows keep of user text
    (normalising first unmasks full-width and zero-width-split personal data)."""
    return normalize(scrub(normalize(text)))


def find_pii(text: str) -> list[str]:
    """The kinds of personal data still present in ``text`` (empty when clean)."""
    return [tag for tag in ("[EMAIL]", "[IBAN]", "[CARD]", "[PHONE]") if tag in scrub(text) and tag not in text]
