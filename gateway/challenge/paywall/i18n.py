"""Languages: the words of Farebox's pages, from gettext catalogues (Babel).

Every text a person reads on a page (paywall, price list, error pages,
transparency report) is a gettext message: `_()` in the templates (Jinja2's
i18n extension) and in Python. English is the source language (the msgids);
each other language is a catalogue in `locales/<lang>/LC_MESSAGES/messages.po`,
compiled to `messages.mo` beside it (both committed, so a wheel or the
container needs no build step; tests/test_i18n.py fails when a `.mo` is not
the compiled `.po`, or when a message is missing or fuzzy in a language).

A request's language is negotiated from Accept-Language (q-values honoured,
a region falls back to its language: es-MX gets Spanish); numbers and money
are formatted for the locale the client asked for (es-MX groups as
1,250,000, es as 1.250.000), in the chosen language. Adding a language:
README, "Languages".
"""

from __future__ import annotations

import gettext
import itertools
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from babel import Locale, UnknownLocaleError, negotiate_locale
from babel.numbers import format_currency, format_decimal
from babel.support import NullTranslations, Translations
from jinja2 import Environment, PackageLoader, select_autoescape

from gateway.edge.weights import weighed

SOURCE = "en"  # the language of the msgids
LOCALES = Path(__file__).parent / "locales"
DOMAIN = "messages"
# A currency's letter code glued to the digits ("EUR1.20", CLDR's pattern for
# es-MX and es-419, whose spacing rule Babel does not apply): a no-break space between.
_GLUED = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")


def _languages() -> tuple[str, ...]:
    found = sorted(
        p.parent.parent.name for p in LOCALES.glob(f"*/LC_MESSAGES/{DOMAIN}.mo") if p.is_file()
    )
    return (SOURCE, *(lang for lang in found if lang != SOURCE))


LANGUAGES = _languages()


def preferred(accept_language: str | None) -> list[str]:
    """The language tags of an Accept-Language header, most wanted first (q=0 dropped).

    Its first members only (edge/weights.py): a header of any length is weighed
    in the same bounded work.
    """
    ranked = [
        (-q, n, tag)
        for n, (tag, q) in enumerate(weighed(accept_language))
        if q > 0 and tag != "*" and len(tag) <= 35
    ]
    return [tag for _, _, tag in sorted(ranked)]


@lru_cache(maxsize=16)
def translations(lang: str) -> gettext.NullTranslations:
    """The compiled catalogue of `lang` (none for the source language)."""
    if lang == SOURCE:
        return NullTranslations()
    return Translations.load(str(LOCALES), [lang], DOMAIN)


@lru_cache(maxsize=16)
def environment(lang: str) -> Environment:
    """The templates, speaking `lang` (one environment per language: no shared state)."""
    env = Environment(
        loader=PackageLoader("gateway.challenge.paywall", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(translations(lang), newstyle=True)  # type: ignore[attr-defined]
    return env


@dataclass(frozen=True, slots=True)
class Speech:
    """A page's language: its words, and numbers and money as its readers write them."""

    lang: str  # the catalogue's language: <html lang>
    locale: Locale  # for numbers and currency (may carry the client's region)

    @property
    def translations(self) -> gettext.NullTranslations:
        return translations(self.lang)

    def gettext(self, message: str) -> str:
        return self.translations.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self.translations.ngettext(singular, plural, n)

    def number(self, n: int | Decimal) -> str:
        return format_decimal(n, locale=self.locale, decimal_quantization=False)

    def sats(self, n: int | Decimal) -> str:
        """'1,250 satoshis' ('1 satoshi'): what a wallet pays."""
        count = int(n) if Decimal(n) == int(n) else 2  # a fraction of a satoshi: plural
        return self.ngettext("%(n)s satoshi", "%(n)s satoshis", count) % {"n": self.number(n)}

    def money(self, cents: Decimal | int | str, currency: str) -> str:
        """An amount in a currency, as the locale writes it: '€1.20', '1,20 €', and
        'EUR 1.20' (a no-break space) where the locale writes a letter code."""
        amount = Decimal(str(cents)) / 100
        text = format_currency(amount, currency, locale=self.locale, decimal_quantization=False)
        return _GLUED.sub("\u00a0", text)

    def duration(self, seconds: int) -> str:
        """A length of time the way a person says it: '24 hours', '5 minutes', '1 day'."""
        if seconds >= 86400 and seconds % 86400 == 0:
            n = seconds // 86400
            text = self.ngettext("%(n)s day", "%(n)s days", n)
        elif seconds >= 3600 and seconds % 3600 == 0:
            n = seconds // 3600
            text = self.ngettext("%(n)s hour", "%(n)s hours", n)
        elif seconds >= 60 and seconds % 60 == 0:
            n = seconds // 60
            text = self.ngettext("%(n)s minute", "%(n)s minutes", n)
        else:
            n = seconds
            text = self.ngettext("%(n)s second", "%(n)s seconds", n)
        return text % {"n": self.number(n)}

    def every(self, seconds: int) -> str:
        """How often something comes back: 'every day', 'every 2 hours'."""
        n, size = seconds, 1
        for size in (86400, 3600, 60, 1):
            if seconds >= size and seconds % size == 0:
                n = seconds // size
                break
        if n == 1:
            return {
                86400: self.gettext("every day"),
                3600: self.gettext("every hour"),
                60: self.gettext("every minute"),
                1: self.gettext("every second"),
            }[size]
        if size == 86400:
            text = self.ngettext("every %(n)s day", "every %(n)s days", n)
        elif size == 3600:
            text = self.ngettext("every %(n)s hour", "every %(n)s hours", n)
        elif size == 60:
            text = self.ngettext("every %(n)s minute", "every %(n)s minutes", n)
        else:
            text = self.ngettext("every %(n)s second", "every %(n)s seconds", n)
        return text % {"n": self.number(n)}


def speech(accept_language: str | None) -> Speech:
    """The language to answer an Accept-Language header in (English when none fits)."""
    # Cached by the tags read, not by the header: a few short keys whatever
    # headers clients send.
    return _speech(tuple(preferred(accept_language)))


# Locale.parse is tried on this many of the client's tags of the chosen
# language at most, for its region; then the language's own locale serves.
_MOST_PARSED = 4


@lru_cache(maxsize=256)
def _speech(wanted: tuple[str, ...]) -> Speech:
    found = negotiate_locale([t.replace("-", "_") for t in wanted], list(LANGUAGES)) or SOURCE
    lang = next((known for known in LANGUAGES if known.lower() == found.lower()), SOURCE)
    locale = Locale.parse(lang)
    ours = (tag for tag in wanted if tag.replace("_", "-").split("-")[0].lower() == lang)
    for tag in itertools.islice(ours, _MOST_PARSED):  # the client's own region for numbers
        try:
            locale = Locale.parse(tag.replace("_", "-"), sep="-")
        except (UnknownLocaleError, ValueError, TypeError):
            continue
        break
    return Speech(lang, locale)
