"""Personal-data scrubbing before anything leaves the feedback store.

A small tested module rather than Presidio/scrubadub: both need NLP models or hubs that are not
reachable offline here, and the kinds we must catch (emails, phones, card numbers, IBANs) are
pattern-shaped. Card numbers are confirmed with the Luhn checksum and IBANs with mod-97, so order
numbers and prices survive.
"""

from __future__ import annotations

import re

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
PHONE = re.compile(r"(?<![\w+])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,4}\)?){2,5}(?!\w)")
# digit runs shaped like calendar dates are kept: answers need them and the phone pattern matches them
DATE = re.compile(r"(?:19|20)\d{2}([-.])(?:0?[1-9]|1[0-2])\1(?:0?[1-9]|[12]\d|3[01])|(?:0?[1-9]|[12]\d|3[01])([-.])(?:0?[1-9]|1[0-2])\2(?:19|20)\d{2}")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _iban_ok(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn_ok(digits) else match.group()


def _phone(match: re.Match) -> str:
    # precision is traded for recall on purpose: a bare 7-15 digit run may be an order number, but a
    # leaked phone number cannot be taken back
    digits = re.sub(r"\D", "", match.group())
    if DATE.fullmatch(match.group()):
        return match.group()
    return "[PHONE]" if 7 <= len(digits) <= 15 else match.group()


def scrub(text: str) -> str:
    """Replace personal data with typed placeholders ([EMAIL], [IBAN], [CARD], [PHONE])."""
    text = EMAIL.sub("[EMAIL]", text)
    text = IBAN.sub(lambda m: "[IBAN]" if _iban_ok(m.group()) else m.group(), text)
    text = CARD.sub(_card, text)
    return PHONE.sub(_phone, text)


def find_pii(text: str) -> list[str]:
    """The kinds of personal data still present in ``text`` (empty when clean)."""
    return [tag for tag in ("[EMAIL]", "[IBAN]", "[CARD]", "[PHONE]") if tag in scrub(text) and tag not in text]
