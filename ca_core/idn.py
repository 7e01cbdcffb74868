"""Internationalized domain names in certificates (issue 16: IDN confusables per policy).

A certificate names an IDN by its A-label (``xn--...``, RFC 5890); what a relying party's
browser shows is the U-label, where "paypal" spelt with a Cyrillic a (U+0430) looks like
the Latin one.
An organization's policy (``policy.idn``) decides:

- ``single-script`` (the default): every A-label must be valid IDNA 2008 (the ``idna``
  package decodes it) and its U-label must use one script, apart from digits and hyphens,
  or one of the mixes UTS #39's "highly restrictive" level allows (Latin with Han, Hiragana
  and Katakana; with Han and Bopomofo; with Han and Hangul). This refuses mixed-script
  confusables; a label entirely in another script that happens to look Latin (whole-script
  confusables) needs the Unicode confusables data, which is not used here: an organization
  that must exclude those uses ``refuse`` or ``allowed_names``.
- ``refuse``: no A-label at all.
- ``allow``: A-labels are not examined (they are LDH names like any other).
"""

from __future__ import annotations

import unicodedata

import idna

from ca_core.errors import PolicyViolation

IDN_MODES = ("single-script", "refuse", "allow")

# UTS #39 5.2 "Highly Restrictive": one script, or one of these mixes.
_ALLOWED_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
# The first word of a character's Unicode name, for the scripts whose names do not start
# with the script (CJK ideographs are Han; Hangul syllables and jamo are Hangul).
_NAME_SCRIPTS = {"CJK": "HAN", "IDEOGRAPHIC": "HAN", "KANGXI": "HAN"}


def _script(char: str) -> str:
    """The script of a character as its Unicode name tells it (the stdlib has no Script
    property); digits, the hyphen and combining marks count as COMMON."""
    if char.isdigit() or char == "-" or unicodedata.category(char).startswith("M"):
        return "COMMON"
    first = unicodedata.name(char, "UNKNOWN").split(" ", 1)[0]
    return _NAME_SCRIPTS.get(first, first)


def label_scripts(u_label: str) -> frozenset[str]:
    return frozenset(_script(c) for c in u_label) - {"COMMON"}


def check_names(names: tuple[str, ...], mode: str) -> None:
    """PolicyViolation for the first DNS name whose A-labels ``mode`` does not allow."""
    if mode == "allow":
        return
    for name in names:
        for label in name.lower().removeprefix("*.").split("."):
            if not label.startswith("xn--"):
                continue
            if mode == "refuse":
                raise PolicyViolation(f"the organization's policy allows no internationalized "
                                      f"names ({name[:100]})")
            try:
                u_label = idna.decode(label)
            except (idna.IDNAError, UnicodeError, ValueError):
                raise PolicyViolation(f"{label[:70]} is not a valid IDNA A-label") from None
            scripts = label_scripts(u_label)
            if len(scripts) > 1 and not any(scripts <= mix for mix in _ALLOWED_MIXES):
                raise PolicyViolation(
                    f"{name[:100]} mixes scripts ({', '.join(sorted(scripts)).lower()}: "
                    f"{u_label[:40]!a}), as look-alike names do; the organization's policy "
                    "allows one script per label")
