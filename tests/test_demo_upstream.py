"""HTTP tests for the sample upstream that ``farebox demo`` runs behind the gateway."""

from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.demo import upstream
from gateway.demo.upstream import CHUNK_SIZE, HELLO_SIZE, start

JSON = "application/json"


def pattern(start_at: int, end: int) -> bytes:
    """What /bench/bytes serves for [start_at, end): byte i is i % 256."""
    return bytes(i % 256 for i in range(start_at, end))


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    runner = await start(port=0)
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, path: str, status: int = 200, **kw):
    async with http.get(path, **kw) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == JSON
        return await resp.json()


async def assert_error(resp: aiohttp.ClientResponse, status: int) -> dict:
    assert resp.status == status
    assert resp.content_type == JSON
    body = await resp.json()
    assert set(body) == {"error"} and body["error"]
    return body


# ----------------------------------------------------------------- indexes


@pytest.mark.parametrize("prefix", ["/archive", "/opendata", "/meter", "/transit", "/bench"])
async def test_index_on_every_prefix(http, prefix):
    for path in (prefix, prefix + "/"):
        body = await get_json(http, path)
        assert body["service"]
        assert body["endpoints"]
        assert all(prefix in endpoint for endpoint in body["endpoints"])


async def test_unknown_path_and_method_are_json_errors(http):
    async with http.get("/nowhere") as resp:
        await assert_error(resp, 404)
    async with http.post("/archive/records/search") as resp:
        await assert_error(resp, 405)
        assert "GET" in resp.headers["Allow"]


# ----------------------------------------------------------------- archive


async def test_archive_search(http):
    hits = await get_json(http, "/archive/records/search", params={"q": "census"})
    assert isinstance(hits, list) and len(hits) == 2
    for hit in hits:
        assert set(hit) == {"id", "title", "year", "pages"}
        assert "Census" in hit["title"]
    assert await get_json(http, "/archive/records/search", params={"q": "zeppelin"}) == []
    async with http.get("/archive/records/search") as resp:
        await assert_error(resp, 400)


async def test_archive_record_and_pages(http):
    record = await get_json(http, "/archive/records/HLM-PR-1701")
    assert record["id"] == "HLM-PR-1701"
    assert record["year"] == 1701
    pages = record["pages"]
    assert pages > 1

    async with http.get(f"/archive/records/HLM-PR-1701/pages/{pages}") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    assert f"page {pages} of {pages}" in text
    assert 200 <= len(text.encode()) <= 2000

    # Deterministic: asking again gives the same transcription.
    async with http.get(f"/archive/records/HLM-PR-1701/pages/{pages}") as resp:
        assert await resp.text() == text


@pytest.mark.parametrize(
    "path",
    [
        "/archive/records/NOPE-1",
        "/archive/records/NOPE-1/pages/1",
        "/archive/records/HLM-PR-1701/pages/0",
        "/archive/records/HLM-PR-1701/pages/999",
        "/archive/records/HLM-PR-1701/pages/abc",
    ],
)
async def test_archive_404s(http, path):
    async with http.get(path) as resp:
        await assert_error(resp, 404)


# ----------------------------------------------------------------- open data


async def test_opendata_datasets(http):
    listed = await get_json(http, "/opendata/datasets")
    ids = {entry["id"] for entry in listed}
    assert {"air-quality", "bus-punctuality"} <= ids
    for entry in listed:
        assert set(entry) == {"id", "title", "rows"} and entry["rows"] > 0


async def test_opendata_search_caps_at_ten_rows(http):
    rows = await get_json(http, "/opendata/search", params={"q": "market square"})
    assert len(rows) == 10
    assert all("dataset" in row for row in rows)
    async with http.get("/opendata/search") as resp:
        await assert_error(resp, 400)


async def test_opendata_query_filters_and_limits(http):
    params = [
        ("dataset", "bus-punctuality"),
        ("where", "stop_id=HM003"),
        ("where", "route=7X"),
        ("limit", "5"),
    ]
    rows = await get_json(http, "/opendata/query", params=params)
    assert len(rows) == 5
    assert all(row["stop_id"] == "HM003" and row["route"] == "7X" for row in rows)

    rows = await get_json(
        http, "/opendata/query", params={"dataset": "bus-punctuality", "limit": "1000"}
    )
    assert len(rows) == 1000


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({}, 400),
        ({"dataset": "unicorns"}, 404),
        ({"dataset": "air-quality", "limit": "1001"}, 400),
        ({"dataset": "air-quality", "limit": "ten"}, 400),
        ({"dataset": "air-quality", "where": "colour=red"}, 400),
        ({"dataset": "air-quality", "where": "no-equals-sign"}, 400),
    ],
)
async def test_opendata_query_errors(http, params, status):
    async with http.get("/opendata/query", params=params) as resp:
        await assert_error(resp, status)


async def test_opendata_export_csv(http):
    listed = {entry["id"]: entry["rows"] for entry in await get_json(http, "/opendata/datasets")}
    async with http.get("/opendata/export/air-quality.csv") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/csv"
        lines = (await resp.text()).splitlines()
    assert lines[0].startswith("station_id,")
    assert len(lines) == listed["air-quality"] + 1
    async with http.get("/opendata/export/unicorns.csv") as resp:
        await assert_error(resp, 404)


async def test_opendata_bulk_is_the_full_history(http):
    async with http.get("/opendata/bulk/air-quality.csv") as resp:
        assert resp.status == 200 and resp.content_type == "text/csv"
        assert "air-quality-full.csv" in resp.headers["Content-Disposition"]
        raw = await resp.read()
    assert 2_000_000 < len(raw) < 3_000_000
    assert int(resp.headers["Content-Length"]) == len(raw)
    lines = raw.decode().splitlines()
    assert lines[0] == "station_id,station,time,pm25,no2,o3"
    assert len(lines) == 1 + 365 * 24 * 5  # hourly, five stations, a year
    assert lines[-1].startswith("AQ05,Fenside Park,2024-06-30T23:00,")
    # The daily export is the mean of the same hourly readings.
    hourly = [
        line.split(",") for line in lines if line.startswith("AQ01,Market Square,2024-06-30T")
    ]
    assert len(hourly) == 24
    async with http.get("/opendata/export/air-quality.csv") as resp:
        daily = [row for row in (await resp.text()).splitlines() if row.startswith("AQ01,")]
    mean = round(sum(float(row[3]) for row in hourly) / 24, 1)
    assert daily[-1].split(",")[2:4] == ["2024-06-30", str(mean)]

    async with http.get("/opendata/bulk/bus-punctuality.csv") as resp:
        bus = (await resp.read()).decode().splitlines()
    assert len(bus) == 1 + 3 * 365 * 15 and 500_000 < sum(map(len, bus)) < 1_000_000
    async with http.get("/opendata/export/bus-punctuality.csv") as resp:
        export = (await resp.text()).splitlines()
    assert export[1:] == bus[-90 * 15 :]  # the export is the bulk file's last 90 days
    async with http.get("/opendata/bulk/unicorns.csv") as resp:
        await assert_error(resp, 404)


# ----------------------------------------------------------------- meter


async def test_meter_reading_is_deterministic(http):
    first = await get_json(http, "/meter/meters/M-1001/reading")
    again = await get_json(http, "/meter/meters/M-1001/reading")
    other = await get_json(http, "/meter/meters/M-2002/reading")
    assert first == again
    assert first["meter_id"] == "M-1001" and first["unit"] == "kWh"
    assert isinstance(first["reading_kwh"], float)
    assert other["reading_kwh"] != first["reading_kwh"]


async def test_meter_usage(http):
    body = await get_json(http, "/meter/meters/M-1001/usage", params={"days": "5"})
    assert len(body["days"]) == 5
    assert body["total_kwh"] == pytest.approx(sum(day["kwh"] for day in body["days"]), abs=0.05)
    default = await get_json(http, "/meter/meters/M-1001/usage")
    assert len(default["days"]) == 7
    for bad in ("0", "-3", "x", "10000"):
        async with http.get("/meter/meters/M-1001/usage", params={"days": bad}) as resp:
            await assert_error(resp, 400)


async def test_meter_draw_reports_the_units_supplied(http):
    async with http.post("/meter/meters/M-1001/draw", json={"kwh": 3.5}) as resp:
        assert resp.status == 200
        assert resp.content_type == JSON
        assert resp.headers["X-Usage-Units"] == "3.5"
        body = await resp.json()
    assert body["meter_id"] == "M-1001" and body["status"] == "supplied"
    assert body["kwh"] == 3.5 and body["unit"] == "kWh"
    assert body["reading_kwh"] == pytest.approx(upstream.current_reading("M-1001") + 3.5)
    # Whole numbers and fractions keep their value; watt-hours are the finest unit.
    for kwh, units in ((10, "10"), (0.25, "0.25"), (2.0001, "2")):
        async with http.post("/meter/meters/M-1001/draw", json={"kwh": kwh}) as resp:
            assert resp.status == 200 and resp.headers["X-Usage-Units"] == units


async def test_an_offline_meter_supplies_nothing(http):
    async with http.post("/meter/meters/offline/draw", json={"kwh": 1}) as resp:
        await assert_error(resp, 503)
        assert "X-Usage-Units" not in resp.headers


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b"{}",
        b'{"kwh": "ten"}',
        b'{"kwh": true}',
        b'{"kwh": -1}',
        b'{"kwh": 0}',
        b'{"kwh": 10.5}',
        b'{"kwh": NaN}',
        b'{"kwh": Infinity}',
        b"\xff\xfe\x00",
        b"[" * 100_000,
    ],
)
async def test_meter_draw_rejects_bad_body(http, body):
    headers = {"Content-Type": "application/json"}
    async with http.post("/meter/meters/M-1001/draw", data=body, headers=headers) as resp:
        await assert_error(resp, 400)
        assert "X-Usage-Units" not in resp.headers


# ----------------------------------------------------------------- transit


async def test_transit_lines_and_timetable(http):
    lines = await get_json(http, "/transit/lines")
    assert {line["id"] for line in lines} == {"1", "4", "7X", "T1"}
    table = await get_json(http, "/transit/lines/T1/timetable")
    assert table["mode"] == "tram" and table["every_minutes"] == 10
    assert table["stops"][0] == {"id": "HM003", "name": "Quay Road", "minutes_from_terminus": 0}
    assert table["departures"][:3] == ["05:30", "05:40", "05:50"]
    assert table["departures"][-1] == "23:30"
    async with http.get("/transit/lines/T9/timetable") as resp:
        await assert_error(resp, 404)


async def test_transit_board_issues_a_ticket(http):
    async with http.post("/transit/lines/7X/board") as resp:
        assert resp.status == 200
        ticket = await resp.json()
    assert ticket["line"] == "7X" and ticket["valid_minutes"] == 90
    assert ticket["boarded_at"] == {"id": "HM012", "name": "Railway Station"}  # the terminus
    assert ticket["ticket"].startswith("HT-")
    async with http.post("/transit/lines/7X/board", json={"stop": "HM009"}) as resp:
        other = await resp.json()
    assert other["boarded_at"]["name"] == "College" and other["ticket"] != ticket["ticket"]
    async with http.post("/transit/lines/7X/board") as resp:
        assert (await resp.json()) == ticket  # stateless: the same request, the same answer


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/transit/lines/T9/board", None, 404),
        ("/transit/lines/7X/board", {"stop": "HM002"}, 400),
        ("/transit/lines/7X/board", {"stop": 7}, 400),
        ("/transit/lines/7X/board", [1], 400),
    ],
)
async def test_transit_board_refusals(http, path, body, status):
    async with http.post(path, json=body) as resp:
        await assert_error(resp, status)
    async with http.get("/transit/lines/7X/board") as resp:
        await assert_error(resp, 405)


# ----------------------------------------------------------------- bench


async def test_bench_hello(http):
    async with http.get("/bench/hello") as resp:
        assert resp.status == 200
        assert resp.content_type == JSON
        raw = await resp.read()
    assert len(raw) == HELLO_SIZE
    assert raw == upstream.HELLO_BODY


@pytest.mark.parametrize("n", [0, 1, 255, CHUNK_SIZE, 3 * CHUNK_SIZE + 123])
async def test_bench_bytes_exact_length_and_content(http, n):
    async with http.get(f"/bench/bytes/{n}") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/octet-stream"
        assert resp.headers["Content-Length"] == str(n)
        assert await resp.read() == pattern(0, n)


async def test_bench_bytes_large_stream(http):
    n = 64 * 1024 * 1024 + 7
    received = 0
    async with http.get(f"/bench/bytes/{n}") as resp:
        assert resp.headers["Content-Length"] == str(n)
        async for chunk in resp.content.iter_any():
            received += len(chunk)
    assert received == n


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=70000-", 70000, 199_999),
        ("bytes=-100", 199_900, 199_999),
        ("bytes=199990-500000", 199_990, 199_999),
        ("bytes=65530-131080", 65530, 131_080),
    ],
)
async def test_bench_bytes_range(http, header, first, last):
    async with http.get("/bench/bytes/200000", headers={"Range": header}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {first}-{last}/200000"
        assert resp.headers["Content-Length"] == str(last - first + 1)
        assert await resp.read() == pattern(first, last + 1)


@pytest.mark.parametrize("header", ["bytes=500-", "bytes=20-10", "bytes=-0", "bytes=0-1,5-6"])
async def test_bench_bytes_unsatisfiable_range(http, header):
    async with http.get("/bench/bytes/100", headers={"Range": header}) as resp:
        await assert_error(resp, 416)
        assert resp.headers["Content-Range"] == "bytes */100"


async def test_bench_bytes_ignores_other_range_units(http):
    async with http.get("/bench/bytes/100", headers={"Range": "items=0-5"}) as resp:
        assert resp.status == 200
        assert len(await resp.read()) == 100


async def test_bench_bytes_head(http):
    n = 5 * 1024 * 1024 * 1024
    async with http.head(f"/bench/bytes/{n}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(n)
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert await resp.read() == b""
    async with http.head("/bench/bytes/1000", headers={"Range": "bytes=0-9"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Length"] == "10"
        assert await resp.read() == b""


async def test_bench_bytes_rejects_absurd_size(http):
    async with http.get(f"/bench/bytes/{10**13 * 5}") as resp:
        await assert_error(resp, 400)
