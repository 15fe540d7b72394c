"""A stand-in for existing public-sector services, used by ``farebox demo``.

It plays a government backend that knows nothing about payments: the gateway
sits in front of it and charges for access. Four small fake services live
under their own path prefixes (``/archive``, ``/opendata``, ``/meter``,
``/transit``), plus ``/bench`` helpers for tests and benchmarks. All data is
generated in code from fixed seeds, so every run and every test sees the same
answers; the services keep no state.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from gateway.demo import consultation

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
EXPORT_DAYS = {"air-quality": 120, "bus-punctuality": 90}  # the daily exports
BULK_DAYS = {"air-quality": 365, "bus-punctuality": 3 * 365}  # the bulk downloads


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


def _days(days: int) -> list[date]:
    """The last `days` days up to DEMO_TODAY, oldest first."""
    return [DEMO_TODAY - timedelta(days=days - 1 - offset) for offset in range(days)]


def _hourly_air(station_id: str, day: date) -> list[tuple[float, float, float]]:
    """24 hourly (pm25, no2, o3) readings; seeded per station and day, so the
    daily export and the hourly bulk file agree on every day they share."""
    rng = random.Random(f"air-quality:{station_id}:{day.isoformat()}")
    level = rng.uniform(0.4, 1.6)  # the day's weather: some days are worse than others
    return [
        (round(level * rng.uniform(2.0, 25.0), 1), round(level * rng.uniform(5.0, 40.0), 1),
         round(level * rng.uniform(20.0, 60.0), 1))
        for _ in range(24)
    ]  # fmt: skip


def _air_quality_rows(days: int) -> tuple[Json, ...]:
    """Daily means of the hourly readings."""
    rows = []
    for day in _days(days):
        for station_id, station in _AQ_STATIONS:
            hours = _hourly_air(station_id, day)
            pm25, no2, o3 = (
                round(sum(column) / len(hours), 1) for column in zip(*hours, strict=True)
            )
            rows.append(
                {
                    "station_id": station_id,
                    "station": station,
                    "date": day.isoformat(),
                    "pm25": pm25,
                    "no2": no2,
                    "o3": o3,
                }
            )
    return tuple(rows)


def _bus_punctuality_rows(days: int) -> tuple[Json, ...]:
    rows = []
    for day in _days(days):
        rng = random.Random(f"bus-punctuality:{day.isoformat()}")
        for index, (stop_id, stop_name) in enumerate(_BUS_STOPS):
            departures = rng.randint(30, 90)
            on_time = departures - rng.randint(0, departures // 4)
            rows.append(
                {
                    "stop_id": stop_id,
                    "stop_name": stop_name,
                    "route": _BUS_ROUTES[index % len(_BUS_ROUTES)],
                    "date": day.isoformat(),
                    "departures": departures,
                    "on_time": on_time,
                    "pct_on_time": round(100 * on_time / departures, 1),
                }
            )
    return tuple(rows)


@functools.cache
def datasets() -> dict[str, Dataset]:
    # Built lazily so importing the module (e.g. by the CLI) costs nothing.
    air = _air_quality_rows(days=EXPORT_DAYS["air-quality"])
    bus = _bus_punctuality_rows(days=EXPORT_DAYS["bus-punctuality"])
    built = (
        Dataset("air-quality", f"{TOWN} daily air quality readings", tuple(air[0]), air),
        Dataset("bus-punctuality", f"{TOWN} bus punctuality per stop per day", tuple(bus[0]), bus),
    )
    return {dataset.id: dataset for dataset in built}


def _csv(fields: Sequence[str], rows: Iterable[Json]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


@functools.cache
def dataset_csv(dataset_id: str) -> bytes:
    dataset = datasets()[dataset_id]
    return _csv(dataset.fields, dataset.rows)


def _hourly_air_csv(days: int) -> bytes:
    # Written by hand rather than with csv: 44k rows, and no field needs quoting.
    lines = ["station_id,station,time,pm25,no2,o3\n"]
    for day in _days(days):
        for station_id, station in _AQ_STATIONS:
            for hour, (pm25, no2, o3) in enumerate(_hourly_air(station_id, day)):
                lines.append(f"{station_id},{station},{day}T{hour:02d}:00,{pm25},{no2},{o3}\n")
    return "".join(lines).encode()


@functools.cache
def bulk_csv(dataset_id: str) -> bytes:
    """A dataset's full history at full resolution: a bulk download of 1-3 MB.

    Air quality: every hourly reading of the last year (~2.4 MB); bus
    punctuality: every day of the last three years (~0.9 MB). The daily
    export is a summary (air quality) or the tail (buses) of the same data.
    """
    days = BULK_DAYS[dataset_id]
    if dataset_id == "air-quality":
        return _hourly_air_csv(days)
    rows = _bus_punctuality_rows(days)
    return _csv(tuple(rows[0]), rows)


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
            "GET /opendata/bulk/{dataset}.csv",
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


def _csv_download(body: bytes, filename: str) -> web.Response:
    return web.Response(
        body=body,
        content_type="text/csv",
        charset="utf-8",
        headers={hdrs.CONTENT_DISPOSITION: f'attachment; filename="{filename}"'},
    )


async def opendata_export(request: web.Request) -> web.Response:
    dataset_id = request.match_info["dataset"]
    if dataset_id not in datasets():
        return _error(404, "no such dataset")
    return _csv_download(dataset_csv(dataset_id), f"{dataset_id}.csv")


async def opendata_bulk(request: web.Request) -> web.Response:
    dataset_id = request.match_info["dataset"]
    if dataset_id not in BULK_DAYS:
        return _error(404, "no such dataset")
    return _csv_download(bulk_csv(dataset_id), f"{dataset_id}-full.csv")


# --------------------------------------------------------------------------
# Utility meter (/meter)
# --------------------------------------------------------------------------

USAGE_DEFAULT_DAYS = 7
USAGE_MAX_DAYS = 366
DRAW_MAX_KWH = 10  # the most one draw may supply; the example policy holds as much
USAGE_UNITS_HEADER = "X-Usage-Units"  # how the meter tells the gateway what to charge
_DRAW_SHAPE = 'body must be a JSON object like {"kwh": 3.5}'


def _meter_hash(*parts: object) -> int:
    # crc32 rather than hash(): str hashing is salted per process, crc32 is not.
    return zlib.crc32(":".join(map(str, parts)).encode())


def current_reading(meter_id: str) -> float:
    return round(1000 + (_meter_hash(meter_id) % 900_000) / 10, 1)


def daily_usage(meter_id: str, day: date) -> float:
    return round(4 + (_meter_hash(meter_id, day.isoformat()) % 160) / 10, 1)


def meter_offline(meter_id: str) -> bool:
    """Meters whose id starts with "offline" never answer: a failure to show
    that a draw which supplied nothing costs nothing."""
    return meter_id.casefold().startswith("offline")


def _json_object(body: bytes) -> Json | None:
    """A request body that is a JSON object, or None."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers bad JSON and bad UTF-8; RecursionError covers hostile nesting.
        return None
    return payload if isinstance(payload, dict) else None


def _draw_kwh(body: bytes) -> Decimal | str:
    """Validate a draw body; a str result is the error message."""
    payload = _json_object(body)
    if payload is None or "kwh" not in payload:
        return _DRAW_SHAPE
    kwh = payload["kwh"]
    # bool is an int subclass, and json.loads accepts NaN/Infinity; neither is an amount.
    if isinstance(kwh, bool) or not isinstance(kwh, int | float) or not math.isfinite(kwh):
        return "kwh must be a number"
    if not 0 < kwh <= DRAW_MAX_KWH:
        return f"kwh must be greater than 0 and at most {DRAW_MAX_KWH}"
    # Through str, so 3.5 stays 3.5 (not 3.49999...); to 0.001 kWh, a watt-hour.
    return Decimal(str(kwh)).quantize(Decimal("0.001")).normalize()


async def meter_index(request: web.Request) -> web.Response:
    return _index(
        f"{TOWN} Smart Meter Service",
        "Readings, usage history and prepaid electricity for household meters.",
        (
            "GET /meter/meters/{meter_id}/reading",
            "GET /meter/meters/{meter_id}/usage?days=",
            "POST /meter/meters/{meter_id}/draw  {kwh}",
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
    usage = [{"date": day.isoformat(), "kwh": daily_usage(meter_id, day)} for day in _days(days)]
    total = round(sum(entry["kwh"] for entry in usage), 1)
    return web.json_response(
        {"meter_id": meter_id, "unit": "kWh", "days": usage, "total_kwh": total}
    )


async def meter_draw(request: web.Request) -> web.Response:
    """Supply `kwh` to a prepaid meter, and report them in X-Usage-Units.

    The utility's system knows nothing of payments: it supplies and reports
    the energy; the gateway charges the household's prepaid tab per kWh.
    Stateless on purpose: the same request always gets the same answer.
    """
    meter_id = request.match_info["meter_id"]
    kwh = _draw_kwh(await request.read())
    if isinstance(kwh, str):
        return _error(400, kwh)
    if meter_offline(meter_id):
        return _error(503, f"meter {meter_id} is not answering; nothing was supplied")
    units = format(kwh, "f")
    return web.json_response(
        {
            "meter_id": meter_id,
            "status": "supplied",
            "kwh": float(kwh),
            "unit": "kWh",
            "reading_kwh": round(current_reading(meter_id) + float(kwh), 1),
            "reference": f"DR-{_meter_hash(meter_id, units):08X}",
        },
        headers={USAGE_UNITS_HEADER: units},
    )


# --------------------------------------------------------------------------
# Public transport (/transit)
# --------------------------------------------------------------------------

TICKET_MINUTES = 90  # a ticket is valid for changes within this time
_STOP_NAMES = dict(_BUS_STOPS)
_FIRST_DEPARTURE = 5 * 60 + 30  # 05:30, in minutes after midnight
_LAST_DEPARTURE = 23 * 60 + 30


@dataclass(frozen=True, slots=True)
class Line:
    id: str
    mode: str
    stops: tuple[str, ...]  # stop ids, terminus first
    every: int  # minutes between departures
    minutes_between_stops: int = 3

    @property
    def name(self) -> str:
        first, last = _STOP_NAMES[self.stops[0]], _STOP_NAMES[self.stops[-1]]
        return f"{first} - {last}"

    def summary(self) -> Json:
        return {"id": self.id, "mode": self.mode, "name": self.name, "every_minutes": self.every}


LINES: dict[str, Line] = {
    line.id: line
    for line in (
        Line("1", "bus", ("HM001", "HM002", "HM004", "HM008", "HM010"), every=15),
        Line("4", "bus", ("HM002", "HM003", "HM013", "HM014"), every=20),
        Line("7X", "express bus", ("HM012", "HM001", "HM009"), every=30, minutes_between_stops=6),
        Line("T1", "tram", ("HM003", "HM001", "HM005", "HM006", "HM015"), every=10),
    )
}


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


async def transit_index(request: web.Request) -> web.Response:
    return _index(
        f"{TOWN} Transit",
        "Buses and trams: lines, timetables and tickets.",
        (
            "GET /transit/lines",
            "GET /transit/lines/{line}/timetable",
            "POST /transit/lines/{line}/board  {stop}",
        ),
    )


async def transit_lines(request: web.Request) -> web.Response:
    return web.json_response([line.summary() for line in LINES.values()])


async def transit_timetable(request: web.Request) -> web.Response:
    line = LINES.get(request.match_info["line"])
    if line is None:
        return _error(404, "no such line")
    departures = range(_FIRST_DEPARTURE, _LAST_DEPARTURE + 1, line.every)
    return web.json_response(
        {
            **line.summary(),
            "date": DEMO_TODAY.isoformat(),
            "stops": [
                {
                    "id": stop,
                    "name": _STOP_NAMES[stop],
                    "minutes_from_terminus": n * line.minutes_between_stops,
                }
                for n, stop in enumerate(line.stops)
            ],
            "departures": [_clock(minutes) for minutes in departures],
        }
    )


async def transit_board(request: web.Request) -> web.Response:
    """Issue a ride ticket; the fare is the gateway's business, not ours."""
    line = LINES.get(request.match_info["line"])
    if line is None:
        return _error(404, "no such line")
    body = await request.read()
    stop = line.stops[0]
    if body.strip():
        payload = _json_object(body)
        if payload is None or not isinstance(payload.get("stop", stop), str):
            return _error(400, 'body must be empty or a JSON object like {"stop": "HM001"}')
        stop = payload.get("stop", stop)
    if stop not in line.stops:
        stops = ", ".join(line.stops)
        return _error(400, f"line {line.id} does not stop at {stop!r}; its stops: {stops}")
    return web.json_response(
        {
            "ticket": f"HT-{_meter_hash('ticket', line.id, stop):08X}",
            "line": line.id,
            "mode": line.mode,
            "name": line.name,
            "boarded_at": {"id": stop, "name": _STOP_NAMES[stop]},
            "valid_minutes": TICKET_MINUTES,
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
    router.add_get("/opendata/bulk/{dataset:[A-Za-z0-9_-]+}.csv", opendata_bulk)

    meter = "/meter/meters/{meter_id:[A-Za-z0-9_-]{1,64}}"
    _add_index(app, "/meter", meter_index)
    router.add_get(meter + "/reading", meter_reading)
    router.add_get(meter + "/usage", meter_usage)
    router.add_post(meter + "/draw", meter_draw)

    line = "/transit/lines/{line:[A-Za-z0-9]{1,8}}"
    _add_index(app, "/transit", transit_index)
    router.add_get("/transit/lines", transit_lines)
    router.add_get(line + "/timetable", transit_timetable)
    router.add_post(line + "/board", transit_board)

    consultation.add_routes(app)  # /register and /consult (issue 15's demo)

    _add_index(app, "/bench", bench_index)
    router.add_get("/bench/hello", bench_hello)
    # 14 digits is ~90 TB; the cap keeps int() parsing and Content-Length sane.
    router.add_get("/bench/bytes/{n:\\d{1,14}}", bench_bytes)
    return app


async def start(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> web.AppRunner:
    """Serve the sample upstream on host:port; the caller owns ``runner.cleanup()``.

    Pass port=0 for a free port and read it back from ``runner.addresses``.
    """
    # Its own access log line per request would read, in the demo's output,
    # as Farebox's (which never logs query strings): the sample keeps quiet.
    runner = web.AppRunner(make_app(), access_log=None)
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
