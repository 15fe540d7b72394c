"""A stand-in for existing public-sector services, used by ``farebox demo``.

It plays a government backend that knows nothing about payments: the gateway
sits in front of it and charges for access. Three small fake services live
under their own path prefixes (``/archive``, ``/opendata``, ``/meter``), plus
``/bench`` helpers for tests and benchmarks. All data is generated in code
from fixed seeds, so every run and every test sees the same answers.

Run it standalone with ``python -m gateway.demo.upstream --port 8403``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import math
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8403

# Sample data is anchored to a fixed day rather than today so answers never drift.
DEMO_TODAY = date(2024, 6, 30)
TOWN = "Hollowmere"

Json = dict[str, Any]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _index(service: str, description: str, endpoints: Sequence[str]) -> web.Response:
    return web.json_response(
        {"service": service, "description": description, "endpoints": list(endpoints)}
    )


def _required_query(request: web.Request, name: str) -> str | None:
    value = request.query.get(name, "").strip()
    return value or None


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int | None:
    """Parse an integer query parameter; None means it was present but invalid."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if low <= value <= high else None


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's plain-text 404/405 (and any raised HTTP error) into JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # 405 must keep its Allow header to stay a valid answer.
        extra = {hdrs.ALLOW: exc.headers[hdrs.ALLOW]} if hdrs.ALLOW in exc.headers else None
        return _error(exc.status, exc.reason.lower(), extra)


# --------------------------------------------------------------------------
# Records archive (/archive)
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    title: str
    kind: str
    year: int
    pages: int
    description: str

    def summary(self) -> Json:
        return {"id": self.id, "title": self.title, "year": self.year, "pages": self.pages}

    def metadata(self) -> Json:
        return {
            **self.summary(),
            "kind": self.kind,
            "description": self.description,
            "held_at": f"{TOWN} Borough Record Office",
            "page_url": f"/archive/records/{self.id}/pages/{{n}}",
        }


RECORDS: tuple[Record, ...] = (
    Record(
        "HLM-PR-1701",
        f"Parish register of St Aldhelm, {TOWN}: baptisms 1701-1742",
        "parish register",
        1701,
        12,
        "Baptisms entered by successive curates; the early leaves are water-stained.",
    ),
    Record(
        "HLM-PR-1754",
        f"Parish register of St Aldhelm, {TOWN}: marriages 1754-1790",
        "parish register",
        1754,
        8,
        "Marriages by banns and by licence, kept under Lord Hardwicke's Act.",
    ),
    Record(
        "HLM-CR-1851",
        f"Census returns, {TOWN} township, 1851",
        "census return",
        1851,
        16,
        "Enumerators' household schedules for the township and the quay.",
    ),
    Record(
        "HLM-CR-1881",
        f"Census returns, {TOWN} township, 1881",
        "census return",
        1881,
        20,
        "Enumerators' household schedules, including the new Fenside terraces.",
    ),
    Record(
        "HLM-CM-1866",
        f"{TOWN} Borough Council minutes: waterworks committee",
        "council minutes",
        1866,
        10,
        "Minutes of the committee that built the Fenside reservoir after the cholera year.",
    ),
    Record(
        "HLM-CM-1923",
        f"{TOWN} Borough Council minutes: tramways and lighting committee",
        "council minutes",
        1923,
        14,
        "Minutes covering the electrification of the tramway and the street lamps.",
    ),
)
RECORDS_BY_ID: dict[str, Record] = {record.id: record for record in RECORDS}

_FORENAMES_M = ("John", "William", "Thomas", "Richard", "George", "Samuel", "Edward", "Joseph")
_FORENAMES_F = ("Mary", "Elizabeth", "Ann", "Sarah", "Hannah", "Martha", "Jane", "Susanna")
_SURNAMES = ("Ashdown", "Barrow", "Cobb", "Dunmore", "Fennick", "Garside", "Holt", "Pike", "Wren")
_TRADES = ("labourer", "cordwainer", "mariner", "maltster", "wheelwright", "weaver", "carter")
_STREETS = ("Quay Road", "Northgate", "Market Square", "Fenside Row", "Mill Lane", "Church Walk")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")  # fmt: skip
_RESOLUTIONS = (
    "the Surveyor report on the state of the {street} culvert at the next meeting",
    "the tender of Mr {surname} for {n} yards of iron piping be accepted",
    "a rate of {n}d. in the pound be levied for the ensuing half year",
    "the Clerk write to the Local Government Board concerning the loan",
    "the lamps in {street} be lit from dusk until midnight",
    "the complaint of Mrs {surname} about the drains in {street} be referred to the Inspector",
)


def _register_entry(rng: random.Random, record: Record, page: int) -> str:
    day, month = rng.randint(1, 28), rng.choice(_MONTHS)
    year = record.year + page * 3 + rng.randint(0, 2)
    surname = rng.choice(_SURNAMES)
    if "marriages" in record.title:
        return (
            f"{day} {month} {year}. {rng.choice(_FORENAMES_M)} {surname}, "
            f"{rng.choice(_TRADES)}, of this parish, and {rng.choice(_FORENAMES_F)} "
            f"{rng.choice(_SURNAMES)}, spinster, were married by banns."
        )
    if rng.random() < 0.5:
        child, relation = rng.choice(_FORENAMES_M), "son"
    else:
        child, relation = rng.choice(_FORENAMES_F), "daughter"
    return (
        f"{day} {month} {year}. {child}, {relation} of {rng.choice(_FORENAMES_M)} {surname}, "
        f"{rng.choice(_TRADES)}, and {rng.choice(_FORENAMES_F)} his wife, baptised."
    )


def _census_entry(rng: random.Random, record: Record, page: int) -> str:
    schedule = page * 10 + rng.randint(0, 9)
    female = rng.random() < 0.5
    forename = rng.choice(_FORENAMES_F if female else _FORENAMES_M)
    return (
        f"Schedule {schedule}. {rng.randint(1, 60)} {rng.choice(_STREETS)}. {forename} "
        f"{rng.choice(_SURNAMES)}, head, age {rng.randint(19, 78)}, {rng.choice(_TRADES)}."
    )


def _minutes_entry(rng: random.Random, record: Record, page: int) -> str:
    resolution = rng.choice(_RESOLUTIONS).format(
        street=rng.choice(_STREETS), surname=rng.choice(_SURNAMES), n=rng.randint(2, 400)
    )
    return f"Item {rng.randint(1, 12)}. Resolved that {resolution}."


_ENTRY_WRITERS = {
    "parish register": _register_entry,
    "census return": _census_entry,
    "council minutes": _minutes_entry,
}


@functools.cache
def page_text(record_id: str, page: int) -> str:
    """Transcription of one page; seeded by record and page so it never changes."""
    record = RECORDS_BY_ID[record_id]
    rng = random.Random(f"{record_id}:{page}")
    write_entry = _ENTRY_WRITERS[record.kind]
    entries = [write_entry(rng, record, page) for _ in range(4)]
    header = f"{record.title}\n{record.id}, page {page} of {record.pages}\n"
    return header + "\n" + "\n".join(entries) + "\n"


async def archive_index(request: web.Request) -> web.Response:
    return _index(
        f"{TOWN} Borough Record Office",
        "Catalogue and page transcriptions of historical records.",
        (
            "GET /archive/records/search?q=",
            "GET /archive/records/{id}",
            "GET /archive/records/{id}/pages/{n}",
        ),
    )


async def archive_search(request: web.Request) -> web.Response:
    q = _required_query(request, "q")
    if q is None:
        return _error(400, "query parameter 'q' is required")
    needle = q.casefold()
    hits = [
        record.summary()
        for record in RECORDS
        if needle in f"{record.id} {record.title} {record.kind} {record.year}".casefold()
    ]
    return web.json_response(hits)


async def archive_record(request: web.Request) -> web.Response:
    record = RECORDS_BY_ID.get(request.match_info["record_id"])
    if record is None:
        return _error(404, "no such record")
    return web.json_response(record.metadata())


async def archive_page(request: web.Request) -> web.Response:
    record = RECORDS_BY_ID.get(request.match_info["record_id"])
    if record is None:
        return _error(404, "no such record")
    page = int(request.match_info["page"])
    if not 1 <= page <= record.pages:
        return _error(404, f"page out of range (1-{record.pages})")
    return web.Response(text=page_text(record.id, page), content_type="text/plain")


# --------------------------------------------------------------------------
# Open-data API (/opendata)
# --------------------------------------------------------------------------

QUERY_MAX_LIMIT = 1000
QUERY_DEFAULT_LIMIT = 100
SEARCH_MAX_ROWS = 10


@dataclass(frozen=True, slots=True)
class Dataset:
    id: str
    title: str
    fields: tuple[str, ...]
    rows: tuple[Json, ...]

    def summary(self) -> Json:
        return {"id": self.id, "title": self.title, "rows": len(self.rows)}


_AQ_STATIONS = (
    ("AQ01", "Market Square"),
    ("AQ02", "Quay Road"),
    ("AQ03", "Station Approach"),
    ("AQ04", "Northgate School"),
    ("AQ05", "Fenside Park"),
)
_BUS_STOPS = tuple(
    (f"HM{i:03d}", name)
    for i, name in enumerate(
        (
            "Market Square", "Bus Station", "Quay Road", "Northgate", "St Aldhelm's Church",
            "Fenside Park", "Mill Lane", "Hospital", "College", "Reservoir Gates",
            "Church Walk", "Railway Station", "Tannery Corner", "Saltings", "Hollowmere Green",
        ),
        start=1,
    )
)  # fmt: skip
_BUS_ROUTES = ("1", "4", "7X")


def _air_quality_rows(days: int) -> tuple[Json, ...]:
    rng = random.Random("air-quality")
    start = DEMO_TODAY - timedelta(days=days - 1)
    rows = []
    for offset in range(days):
        day = (start + timedelta(days=offset)).isoformat()
        for station_id, station in _AQ_STATIONS:
            rows.append(
                {
                    "station_id": station_id,
                    "station": station,
                    "date": day,
                    "pm25": round(rng.uniform(2.0, 35.0), 1),
                    "no2": round(rng.uniform(5.0, 60.0), 1),
                    "o3": round(rng.uniform(20.0, 90.0), 1),
                }
            )
    return tuple(rows)


def _bus_punctuality_rows(days: int) -> tuple[Json, ...]:
    rng = random.Random("bus-punctuality")
    start = DEMO_TODAY - timedelta(days=days - 1)
    rows = []
    for offset in range(days):
        day = (start + timedelta(days=offset)).isoformat()
        for index, (stop_id, stop_name) in enumerate(_BUS_STOPS):
            departures = rng.randint(30, 90)
            on_time = departures - rng.randint(0, departures // 4)
            rows.append(
                {
                    "stop_id": stop_id,
                    "stop_name": stop_name,
                    "route": _BUS_ROUTES[index % len(_BUS_ROUTES)],
                    "date": day,
                    "departures": departures,
                    "on_time": on_time,
                    "pct_on_time": round(100 * on_time / departures, 1),
                }
            )
    return tuple(rows)


@functools.cache
def datasets() -> dict[str, Dataset]:
    # Built lazily so importing the module (e.g. by the CLI) costs nothing.
    air = _air_quality_rows(days=120)
    bus = _bus_punctuality_rows(days=90)
    built = (
        Dataset("air-quality", f"{TOWN} daily air quality readings", tuple(air[0]), air),
        Dataset("bus-punctuality", f"{TOWN} bus punctuality per stop per day", tuple(bus[0]), bus),
    )
    return {dataset.id: dataset for dataset in built}


@functools.cache
def dataset_csv(dataset_id: str) -> bytes:
    dataset = datasets()[dataset_id]
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=dataset.fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(dataset.rows)
    return out.getvalue().encode()


def _parse_where(clauses: Sequence[str], dataset: Dataset) -> list[tuple[str, str]] | str:
    """Parse ``field=value`` clauses; a str result is the error message."""
    parsed = []
    for clause in clauses:
        field, sep, value = clause.partition("=")
        field = field.strip()
        if not sep or not field:
            return f"bad where clause {clause!r}; expected field=value"
        if field not in dataset.fields:
            return f"unknown field {field!r}; fields are {', '.join(dataset.fields)}"
        parsed.append((field, value.strip()))
    return parsed


def _matches(row: Json, conditions: Sequence[tuple[str, str]]) -> bool:
    # Compare as text so "route=7X" and "departures=42" both work without a type system.
    return all(str(row[field]) == value for field, value in conditions)


async def opendata_index(request: web.Request) -> web.Response:
    return _index(
        f"{TOWN} Open Data",
        "Public datasets published by the borough council.",
        (
            "GET /opendata/datasets",
            "GET /opendata/search?q=",
            "GET /opendata/query?dataset=&where=field=value&limit=",
            "GET /opendata/export/{dataset}.csv",
        ),
    )


async def opendata_datasets(request: web.Request) -> web.Response:
    return web.json_response([dataset.summary() for dataset in datasets().values()])


async def opendata_search(request: web.Request) -> web.Response:
    q = _required_query(request, "q")
    if q is None:
        return _error(400, "query parameter 'q' is required")
    needle = q.casefold()
    hits: list[Json] = []
    for dataset in datasets().values():
        for row in dataset.rows:
            if any(needle in str(value).casefold() for value in row.values()):
                hits.append({"dataset": dataset.id, **row})
                if len(hits) == SEARCH_MAX_ROWS:
                    return web.json_response(hits)
    return web.json_response(hits)


async def opendata_query(request: web.Request) -> web.Response:
    dataset_id = _required_query(request, "dataset")
    if dataset_id is None:
        return _error(400, "query parameter 'dataset' is required")
    dataset = datasets().get(dataset_id)
    if dataset is None:
        return _error(404, "no such dataset")
    limit = _int_param(request, "limit", QUERY_DEFAULT_LIMIT, 1, QUERY_MAX_LIMIT)
    if limit is None:
        return _error(400, f"limit must be an integer between 1 and {QUERY_MAX_LIMIT}")
    conditions = _parse_where(request.query.getall("where", []), dataset)
    if isinstance(conditions, str):
        return _error(400, conditions)
    rows = [row for row in dataset.rows if _matches(row, conditions)][:limit]
    return web.json_response(rows)


async def opendata_export(request: web.Request) -> web.Response:
    dataset_id = request.match_info["dataset"]
    if dataset_id not in datasets():
        return _error(404, "no such dataset")
    return web.Response(
        body=dataset_csv(dataset_id),
        content_type="text/csv",
        charset="utf-8",
        headers={hdrs.CONTENT_DISPOSITION: f'attachment; filename="{dataset_id}.csv"'},
    )


# --------------------------------------------------------------------------
# Utility meter (/meter)
# --------------------------------------------------------------------------

USAGE_DEFAULT_DAYS = 7
USAGE_MAX_DAYS = 366
TOPUP_MAX_KWH = 10_000
_TOPUP_SHAPE = 'body must be a JSON object like {"kwh": 10}'


def _meter_hash(*parts: object) -> int:
    # crc32 rather than hash(): str hashing is salted per process, crc32 is not.
    return zlib.crc32(":".join(map(str, parts)).encode())


def current_reading(meter_id: str) -> float:
    return round(1000 + (_meter_hash(meter_id) % 900_000) / 10, 1)


def daily_usage(meter_id: str, day: date) -> float:
    return round(4 + (_meter_hash(meter_id, day.isoformat()) % 160) / 10, 1)


async def meter_index(request: web.Request) -> web.Response:
    return _index(
        f"{TOWN} Smart Meter Service",
        "Readings, usage history and prepaid top-ups for household electricity meters.",
        (
            "GET /meter/meters/{meter_id}/reading",
            "GET /meter/meters/{meter_id}/usage?days=",
            "POST /meter/meters/{meter_id}/topup",
        ),
    )


async def meter_reading(request: web.Request) -> web.Response:
    meter_id = request.match_info["meter_id"]
    return web.json_response(
        {
            "meter_id": meter_id,
            "reading_kwh": current_reading(meter_id),
            "unit": "kWh",
            "read_at": f"{DEMO_TODAY.isoformat()}T00:00:00Z",
        }
    )


async def meter_usage(request: web.Request) -> web.Response:
    meter_id = request.match_info["meter_id"]
    days = _int_param(request, "days", USAGE_DEFAULT_DAYS, 1, USAGE_MAX_DAYS)
    if days is None:
        return _error(400, f"days must be an integer between 1 and {USAGE_MAX_DAYS}")
    first = DEMO_TODAY - timedelta(days=days - 1)
    usage = [
        {"date": day.isoformat(), "kwh": daily_usage(meter_id, day)}
        for day in (first + timedelta(days=offset) for offset in range(days))
    ]
    total = round(sum(entry["kwh"] for entry in usage), 1)
    return web.json_response(
        {"meter_id": meter_id, "unit": "kWh", "days": usage, "total_kwh": total}
    )


def _topup_kwh(body: bytes) -> float | str:
    """Validate a top-up body; a str result is the error message."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers bad JSON and bad UTF-8; RecursionError covers hostile nesting.
        return _TOPUP_SHAPE
    if not isinstance(payload, dict) or "kwh" not in payload:
        return _TOPUP_SHAPE
    kwh = payload["kwh"]
    # bool is an int subclass, and json.loads accepts NaN/Infinity; neither is an amount.
    if isinstance(kwh, bool) or not isinstance(kwh, int | float) or not math.isfinite(kwh):
        return "kwh must be a number"
    if not 0 < kwh <= TOPUP_MAX_KWH:
        return f"kwh must be greater than 0 and at most {TOPUP_MAX_KWH}"
    return float(kwh)


async def meter_topup(request: web.Request) -> web.Response:
    meter_id = request.match_info["meter_id"]
    kwh = _topup_kwh(await request.read())
    if isinstance(kwh, str):
        return _error(400, kwh)
    # Stateless on purpose: the same request always gets the same answer.
    credit = round((_meter_hash(meter_id, "credit") % 500) / 10 + kwh, 1)
    return web.json_response(
        {
            "meter_id": meter_id,
            "status": "accepted",
            "topup_kwh": kwh,
            "credit_kwh": credit,
            "reference": f"TU-{_meter_hash(meter_id, kwh):08X}",
        }
    )


# --------------------------------------------------------------------------
# Benchmark helpers (/bench)
# --------------------------------------------------------------------------

HELLO_SIZE = 1024
CHUNK_SIZE = 64 * 1024
MAX_BENCH_BYTES = 1 << 40


def _build_hello(size: int) -> bytes:
    body: Json = {"service": "farebox-demo-upstream", "message": "hello", "padding": ""}
    overhead = len(json.dumps(body, separators=(",", ":")).encode())
    body["padding"] = "x" * (size - overhead)
    return json.dumps(body, separators=(",", ":")).encode()


HELLO_BODY = _build_hello(HELLO_SIZE)

# Byte i of every /bench/bytes stream is i % 256, so a client can check any range
# it receives. CHUNK_SIZE is a multiple of 256 and the buffer carries 256 extra
# bytes, so a full chunk can start at any phase without allocating.
_PATTERN = memoryview(bytes(range(256)) * (CHUNK_SIZE // 256 + 1))


class _Unsatisfiable(Exception):
    pass


# One range only: multipart/byteranges answers are not worth it for a test helper.
_BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII | re.IGNORECASE)


def parse_range(header: str | None, total: int) -> tuple[int, int] | None:
    """Return [start, end) for a ``Range: bytes=`` header, or None to serve everything.

    Raises _Unsatisfiable for a bytes range we cannot or will not serve.
    """
    if header is None:
        return None
    header = header.strip()
    if not header.lower().startswith("bytes="):
        return None  # Unknown range units are ignored, per RFC 9110 section 14.2.
    match = _BYTE_RANGE.fullmatch(header)
    if match is None:
        raise _Unsatisfiable
    first, last = match.groups()
    if not first:  # Suffix form "-N": the last N bytes.
        if not last or int(last) == 0 or total == 0:
            raise _Unsatisfiable
        return max(0, total - int(last)), total
    start = int(first)
    end = int(last) + 1 if last else total
    if start >= total or end <= start:
        raise _Unsatisfiable
    return start, min(end, total)


async def bench_index(request: web.Request) -> web.Response:
    return _index(
        "Benchmark helpers",
        "Fixed-size responses for tests and load generators.",
        ("GET /bench/hello", "GET|HEAD /bench/bytes/{n}  (supports Range: bytes=a-b)"),
    )


async def bench_hello(request: web.Request) -> web.Response:
    return web.Response(body=HELLO_BODY, content_type="application/json")


async def bench_bytes(request: web.Request) -> web.StreamResponse:
    total = int(request.match_info["n"])
    if total > MAX_BENCH_BYTES:
        return _error(400, f"n must be at most {MAX_BENCH_BYTES}")
    try:
        span = parse_range(request.headers.get(hdrs.RANGE), total)
    except _Unsatisfiable:
        return _error(416, "range not satisfiable", {hdrs.CONTENT_RANGE: f"bytes */{total}"})
    start, end = span if span is not None else (0, total)
    response = web.StreamResponse(status=200 if span is None else 206)
    response.headers[hdrs.ACCEPT_RANGES] = "bytes"
    if span is not None:
        response.headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{end - 1}/{total}"
    response.content_type = "application/octet-stream"
    response.content_length = end - start
    await response.prepare(request)
    if request.method == hdrs.METH_HEAD:
        return response
    position = start
    try:
        while position < end:
            size = min(CHUNK_SIZE, end - position)
            phase = position % 256
            # write() waits for the socket to drain, which is what bounds memory.
            await response.write(_PATTERN[phase : phase + size])
            position += size
    except ConnectionError:
        # A client that stops reading a multi-GiB body is normal, not a server error.
        return response
    await response.write_eof()
    return response


# --------------------------------------------------------------------------
# Application
# --------------------------------------------------------------------------


def _add_index(app: web.Application, prefix: str, handler: Handler) -> None:
    # Both spellings, so "/archive" does not 404 for someone exploring by hand.
    app.router.add_get(prefix, handler)
    app.router.add_get(prefix + "/", handler)


def make_app() -> web.Application:
    app = web.Application(middlewares=[json_errors])
    router = app.router

    _add_index(app, "/archive", archive_index)
    # The literal search route is added before {record_id} so it can never be shadowed.
    router.add_get("/archive/records/search", archive_search)
    router.add_get("/archive/records/{record_id}", archive_record)
    router.add_get("/archive/records/{record_id}/pages/{page:\\d{1,9}}", archive_page)

    _add_index(app, "/opendata", opendata_index)
    router.add_get("/opendata/datasets", opendata_datasets)
    router.add_get("/opendata/search", opendata_search)
    router.add_get("/opendata/query", opendata_query)
    router.add_get("/opendata/export/{dataset:[A-Za-z0-9_-]+}.csv", opendata_export)

    meter = "/meter/meters/{meter_id:[A-Za-z0-9_-]{1,64}}"
    _add_index(app, "/meter", meter_index)
    router.add_get(meter + "/reading", meter_reading)
    router.add_get(meter + "/usage", meter_usage)
    router.add_post(meter + "/topup", meter_topup)

    _add_index(app, "/bench", bench_index)
    router.add_get("/bench/hello", bench_hello)
    # 14 digits is ~90 TB; the cap keeps int() parsing and Content-Length sane.
    router.add_get("/bench/bytes/{n:\\d{1,14}}", bench_bytes)
    return app


async def start(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> web.AppRunner:
    """Serve the sample upstream on host:port; the caller owns ``runner.cleanup()``.

    Pass port=0 for a free port and read it back from ``runner.addresses``.
    """
    runner = web.AppRunner(make_app())
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.demo.upstream",
        description="Run the Farebox sample upstream (fake public-sector services).",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"default {DEFAULT_HOST}")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    args = parser.parse_args(argv)
    web.run_app(make_app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
