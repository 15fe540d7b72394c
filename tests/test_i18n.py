"""Languages (issue 17, point 3): every text a person reads is a gettext message,
each language's catalogue is complete, and Accept-Language picks the language.

The messages are extracted from the sources with Babel's own extractor and
babel.cfg, as the README's commands do, and compared with each catalogue: a
message missing, untranslated or fuzzy in a language fails here, as does a
compiled .mo that is not its .po, or a .pot that is not what the sources say.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import aiohttp
import pytest
from babel.messages.frontend import CommandLineInterface
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from gateway.challenge.paywall.i18n import LANGUAGES, LOCALES, SOURCE, preferred, speech
from tests.conftest import GatewayFactory

ROOT = Path(__file__).resolve().parent.parent
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def key(message) -> str | tuple[str, ...]:
    return message.id if isinstance(message.id, str) else tuple(message.id)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> dict:
    """The messages of the sources, extracted by Babel as the README says."""
    out = tmp_path_factory.mktemp("pot") / "messages.pot"
    CommandLineInterface().run(
        ["pybabel", "-q", "extract", "-F", str(ROOT / "babel.cfg"), "-k", "N_",
         "--no-location", "-o", str(out), str(ROOT)]
    )  # fmt: skip
    with out.open("rb") as f:
        catalog = read_po(f)
    found = {key(m): m for m in catalog if m.id}
    assert len(found) > 80  # the pages' words, not an empty extraction
    return found


def test_there_is_a_language_besides_english() -> None:
    assert SOURCE == "en" and "es" in LANGUAGES


def test_the_template_is_what_the_sources_say(extracted) -> None:
    with (LOCALES / "messages.pot").open("rb") as f:
        template = {key(m) for m in read_po(f) if m.id}
    assert template == set(extracted), (
        "messages.pot is stale: run the pybabel extract command in README.md, Languages"
    )


@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang != SOURCE])
def test_every_message_is_translated_in_every_language(extracted, lang: str) -> None:
    with (LOCALES / lang / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalog = read_po(f, locale=lang)
    have = {key(m): m for m in catalog if m.id}
    missing = [k for k in extracted if k not in have]
    assert not missing, f"{lang}: missing {missing}"
    fuzzy = [k for k, m in have.items() if m.fuzzy]
    empty = [
        k for k, m in have.items() if not (m.string if isinstance(m.string, str) else all(m.string))
    ]
    assert not fuzzy and not empty, f"{lang}: fuzzy {fuzzy}, untranslated {empty}"
    stale = [k for k in have if k not in extracted]
    assert not stale, f"{lang}: no longer in the sources {stale} (pybabel update --ignore-obsolete)"
    # Placeholders agree with the msgid's (Babel's own checkers).
    problems = [(m.id, [str(e) for e in errors]) for m, errors in catalog.check()]
    assert not problems, f"{lang}: {problems}"


@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang != SOURCE])
def test_the_compiled_catalogue_is_the_po_file(lang: str) -> None:
    folder = LOCALES / lang / "LC_MESSAGES"
    with (folder / "messages.po").open("rb") as f:
        # What `pybabel compile` writes: fuzzy and untranslated entries are left
        # out (the test above names those).
        po = {
            key(m): m.string
            for m in read_po(f, locale=lang)
            if m.id and not m.fuzzy and (m.string if isinstance(m.string, str) else all(m.string))
        }
    with (folder / "messages.mo").open("rb") as f:
        mo = {key(m): m.string for m in read_mo(f) if m.id}
    normal = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in po.items()}
    assert {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in mo.items()} == normal, (
        f"{folder / 'messages.mo'} is stale: run the pybabel compile command in README.md"
    )


def test_the_wheel_ships_the_catalogues(tmp_path: Path) -> None:
    """`pip install .` (and so the image's build stage) installs the compiled catalogues."""
    context = tmp_path / "src"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, context / name)
    shutil.copytree(
        ROOT / "gateway", context / "gateway", ignore=shutil.ignore_patterns("__pycache__")
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True, text=True, timeout=180, env={**os.environ, "PIP_NO_INDEX": "1"},
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (tmp_path / "dist").glob("farebox-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for lang in LANGUAGES:
        if lang != SOURCE:
            assert f"gateway/challenge/paywall/locales/{lang}/LC_MESSAGES/messages.mo" in names


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        (None, "en"),
        ("es", "es"),
        ("es-AR,es;q=0.9", "es"),
        ("en;q=0.3, es;q=0.7", "es"),
        ("es;q=0, en", "en"),
        # "zz" and "x-klingon": languages no catalogue will ever be added for
        ("zz-ZZ,zz;q=0.9", "en"),
        ("x-klingon, es;q=0.5", "es"),
        ("*", "en"),
        ("garbage;;q=x,", "en"),
        ("ES-mx", "es"),
        ("es;q=nan, en;q=0.1", "en"),
        ("es;q=inf, en;q=0.1", "en"),
    ],
)
def test_the_language_is_negotiated_with_q_values(header: str | None, lang: str) -> None:
    assert speech(header).lang == lang


def test_preferred_orders_by_q() -> None:
    assert preferred("en;q=0.5, es-MX, fr;q=0.8, de;q=0") == ["es-MX", "fr", "en"]


POLICY = """\
services:
  archive:
    upstream: {upstream}
    mount: /archive
    description: County records archive
    routes:
      - path: /search
        price: free
        free_quota: {{requests: 1, per: 1d}}
      - path: /pages/{{n}}
        price: 1250000
        description: One transcribed page
        grant: {{lasts: 1d}}
"""
SPANISH = {"Accept": BROWSER, "Accept-Language": "es-ES,es;q=0.9,en;q=0.8"}


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url, headers=SPANISH) as r:
        return r.status, await r.text()


async def test_a_spanish_reader_gets_spanish_pages(gateway: GatewayFactory, upstream) -> None:
    base = await gateway(POLICY.format(upstream=upstream.url))
    async with aiohttp.ClientSession() as http:
        status, page = await get(http, base + "/archive/pages/1")  # the paywall
        assert status == 402 and '<html lang="es">' in page
        assert "Pago necesario" in page and "1.250.000 satoshis" in page
        assert "Puede abrirlo tantas veces como quiera durante 1 día." in page

        status, page = await get(http, base + "/.well-known/farebox/prices")
        assert status == 200 and '<html lang="es">' in page
        assert "<h1>Precios</h1>" in page and "ese elemento, durante 1 día" in page
        assert "1 consulta gratis cada día por red" in page

        status, page = await get(http, base + "/nothing-here")  # an error page
        assert status == 404 and '<html lang="es">' in page
        assert "<h1>No se ha encontrado</h1>" in page and "Compruebe la dirección" in page
        await get(http, base + "/archive/search")
        status, page = await get(http, base + "/archive/search")  # the free quota is used
        assert status == 429 and "Ha agotado por ahora las consultas gratuitas" in page

        status, page = await get(http, base + "/.well-known/farebox/transparency")
        assert status == 200 and '<html lang="es">' in page
        assert "Informe de transparencia" in page and "Lo que se ha pagado" in page
        assert "No hay pagos en este periodo." in page

        # The same pages in English for an English reader.
        async with http.get(
            base + "/.well-known/farebox/transparency",
            headers={"Accept": BROWSER, "Accept-Language": "en-GB"},
        ) as r:
            page = await r.text()
        assert '<html lang="en">' in page and "What was paid" in page
