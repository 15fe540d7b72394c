"""The nginx configs and wrk runs of `bench/all.py` (`./dev bench-all`).

- `auth_request_site`: nginx/farebox-auth-request.conf from the repository,
  rendered at run time into a runnable site (ports, upstreams, paths), so the
  bench measures the deployment the README recommends, not a copy of it;
- `challenge_conf`: an nginx that answers every request as Farebox answers an
  unpaid one (402, the same headers, a body of the same length);
- `wrk_command`, `wrk_start`, `wrk_finish` and `pacing_script`: wrk runs,
  closed-loop or paced at a fixed rate, several at once if need be.

Every function raises `proxy.BenchError` with a one-line reason when it
cannot do its job.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from proxy import HOST, WRK_TIMEOUT, BenchError, nginx_common

REPO = Path(__file__).resolve().parent.parent
AUTH_REQUEST_TEMPLATE = REPO / "nginx" / "farebox-auth-request.conf"
# Answer headers nginx sets itself (or that describe the connection): the
# copy of Farebox's 402 leaves them to nginx.
HOP_HEADERS = {
    "date",
    "server",
    "content-length",
    "content-type",
    "connection",
    "keep-alive",
    "transfer-encoding",
}


def nginx_main_conf(name: str, tmp: Path, workers: int, temp: str, site: Path) -> str:
    """A whole nginx.conf around an http-level `site` file (as sites-enabled/ is included).

    Access log off, like the plain proxy it is compared with.
    """
    return (
        nginx_common(name, tmp, workers)
        + f"""\
http {{
    access_log off;
    {temp}
    default_type application/octet-stream;
    include {site};
}}
"""
    )


def auth_request_site(
    *,
    port: int,
    redirect_port: int,
    farebox_port: int,
    service_port: int,
    cert: Path,
    key: Path,
    cache_dir: Path,
) -> tuple[str, list[str]]:
    """nginx/farebox-auth-request.conf with the bench's ports and paths put in.

    Returns (site text, the substitutions made, one line each, for the
    report). The substitutions are those of tests/test_nginx.py (ports,
    certificate paths, the `upstream farebox` and `upstream service`
    servers) plus three that make it measurable on one machine:

    - the HTTPS listener becomes plain HTTP on 127.0.0.1 (the plain nginx
      proxy it is compared with speaks HTTP; TLS would add its own cost to
      one side only). The certificate lines stay and load a self-signed
      certificate;
    - the per-client `limit_req_zone` rate is raised to 1,000,000 r/s and
      the `limit_req` burst to 1,000,000: all of wrk's load comes from one
      address, which the shipped 20 r/s (burst 40) would answer with 429,
      and nginx counts the requests of one event-loop pass as arriving in
      the same millisecond (the zone lookup is still paid per request);
    - any `proxy_cache_path` (the cache of Farebox's decisions) points into
      the temporary directory.

    A template that no longer holds a text to replace raises BenchError: the
    bench must be updated rather than measure something else.
    """
    text = AUTH_REQUEST_TEMPLATE.read_text()
    made: list[str] = []
    replace = {
        "listen 443 ssl http2;": f"listen {HOST}:{port};",
        "listen [::]:443 ssl http2;": "",
        "listen 80;": f"listen {HOST}:{redirect_port};",
        "listen [::]:80;": "",
        "/etc/ssl/farebox/fullchain.pem": str(cert),
        "/etc/ssl/farebox/privkey.pem": str(key),
        "server 127.0.0.1:8402;": f"server {HOST}:{farebox_port};",
        "server 10.0.0.5:8080;": f"server {HOST}:{service_port};",
    }
    for old, new in replace.items():
        if old not in text:
            raise BenchError(
                f"{old!r} is no longer in nginx/farebox-auth-request.conf: update bench/fronts.py"
            )
        text = text.replace(old, new)
        made.append(f"{old!r} -> {new!r}")

    def rate(match: re.Match[str]) -> str:
        made.append(f"{match.group(0)!r} -> rate=1000000r/s (one client address makes all load)")
        return "rate=1000000r/s"

    text = re.sub(r"(?<=\s)rate=\d+r/[sm]", rate, text)

    def burst(match: re.Match[str]) -> str:
        made.append(
            f"{match.group(0)!r} -> burst=1000000 (nginx adds up a whole event-loop batch in one ms)"
        )
        return "burst=1000000"

    text = re.sub(r"(?<=\s)burst=\d+", burst, text)

    def cache_path(match: re.Match[str]) -> str:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache_dir.chmod(0o777)  # nginx workers (nobody under root) write there
        made.append(f"proxy_cache_path {match.group(2)} -> {cache_dir}")
        return f"{match.group(1)}{cache_dir}"

    text = re.sub(r"^(\s*proxy_cache_path\s+)(\S+)", cache_path, text, flags=re.MULTILINE)
    return text, made


def _nginx_string(value: str) -> str:
    """A double-quoted nginx string whose value is exactly `value`.

    `$` would start a variable: it is written `${dollar}`, a variable whose
    value is "$" (see `challenge_conf`).
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "${dollar}")
    return f'"{escaped}"'


def challenge_conf(
    tmp: Path,
    workers: int,
    port: int,
    temp: str,
    content_type: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> str:
    """An nginx answering every GET with 402, the given headers, content type and body.

    `headers` are Farebox's answer headers as (name, value) pairs; those
    nginx sets itself (Date, Server, Content-Length, Content-Type, ...) are
    left out, the rest are added with `always` (add_header skips 4xx
    otherwise).
    """
    adds = "\n".join(
        f"            add_header {name} {_nginx_string(value)} always;"
        for name, value in headers
        if name.lower() not in HOP_HEADERS
    )
    return (
        nginx_common("nginx-402", tmp, workers)
        + f"""\
http {{
    access_log off;
    {temp}
    geo $dollar {{
        default "$";
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            default_type {_nginx_string(content_type)};
{adds}
            return 402 {_nginx_string(body.decode())};
        }}
    }}
}}
"""
    )


def pacing_script(path: Path, mean_delay_ms: int) -> Path:
    """A wrk Lua script pacing each connection: a random delay before every request.

    The delay is uniform over whole milliseconds 0..2*mean (wrk truncates
    delay() to whole ms), mean `mean_delay_ms`, so connections do not fire
    in lockstep. wrk's latency figures exclude the delay.
    """
    path.write_text(
        f"""\
math.randomseed(os.time())
function delay()
    return math.random(0, {2 * mean_delay_ms})
end
"""
    )
    return path


def wrk_command(
    tool: str,
    url: str,
    seconds: float,
    *,
    connections: int,
    headers: dict[str, str] | None = None,
    script: Path | None = None,
) -> list[str]:
    """The argv of one wrk run with latency percentiles (one thread; start
    several with `wrk_start` to load several targets at once)."""
    cmd = [tool, "-t", "1", "-c", str(connections)]
    cmd += ["-d", f"{max(1, round(seconds))}s", "--timeout", WRK_TIMEOUT]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if script is not None:
        cmd += ["-s", str(script)]
    return [*cmd, "--latency", url]


def wrk_start(cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def wrk_finish(proc: subprocess.Popen[str], cmd: list[str], seconds: float) -> str:
    """Wait for a wrk started by `wrk_start`; its output, or BenchError."""
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise BenchError(f"wrk did not finish: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return out
