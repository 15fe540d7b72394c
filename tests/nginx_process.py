"""A real nginx (Debian's) for tests: a self-signed certificate, a config
made from one of the templates in nginx/, and nginx run in the foreground on
free ports with a prefix of its own (as bench/proxy.py runs it)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TEMPLATES = Path(__file__).resolve().parent.parent / "nginx"


def find_nginx() -> str | None:
    # /usr/sbin is not on a normal user's PATH, but that is where nginx lives.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def need_nginx() -> str:
    found = find_nginx()
    if found is None:
        pytest.skip("nginx is not installed (`./dev test` installs Debian's nginx-light)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def client_tls(cert: Path) -> ssl.SSLContext:
    """A client context trusting only the test's certificate."""
    return ssl.create_default_context(cafile=str(cert))


def render(template: str, replace: dict[str, str]) -> str:
    """A template from nginx/ with the test's ports and paths put in.

    Every text to replace must be in the template: a template edited so
    that the test no longer changes what it meant to fails here, loudly.
    """
    text = (TEMPLATES / template).read_text()
    for old, new in replace.items():
        assert old in text, f"{old!r} is no longer in nginx/{template}: update tests/test_nginx.py"
        text = text.replace(old, new)
    return text


def _temp_paths(nginx: str, prefix: Path) -> str:
    # Only for modules this nginx has: an unknown directive is a fatal error.
    configure = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False).stderr
    lines = [f"client_body_temp_path {prefix}/client_body;"]
    for module in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in configure:
            lines.append(f"{module}_temp_path {prefix}/{module};")
    return "\n    ".join(lines)


@dataclass
class Nginx:
    prefix: Path
    proc: asyncio.subprocess.Process

    @property
    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.asynccontextmanager
async def running_nginx(site: str, ports: tuple[int, ...]) -> AsyncIterator[Nginx]:
    """Run nginx with `site` (an http-level file, as in sites-enabled/) until
    the block ends; ready once every port in `ports` accepts connections."""
    nginx = need_nginx()
    # Its own directory, readable by the workers (which run as nobody under
    # root): pytest's tmp_path sits in a directory only its owner may enter.
    prefix = Path(tempfile.mkdtemp(prefix="farebox-nginx-"))
    prefix.chmod(0o755)
    (prefix / "site.conf").write_text(site)
    (prefix / "nginx.conf").write_text(
        f"""\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{
    worker_connections 256;
}}
http {{
    access_log {prefix}/access.log;
    {_temp_paths(nginx, prefix)}
    default_type application/octet-stream;
    include {prefix}/site.conf;
}}
"""
    )
    cmd = [nginx, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf")]
    if _version(nginx) >= (1, 19, 5):
        cmd += ["-e", str(prefix / "startup.log")]  # never the system's error log
    checked = subprocess.run([*cmd, "-t", "-q"], capture_output=True, text=True, check=False)
    if checked.returncode != 0:
        shutil.rmtree(prefix, ignore_errors=True)
        raise AssertionError(f"nginx rejected the config:\n{checked.stderr}\n{site}")
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    running = Nginx(prefix, proc)
    try:
        await _wait_for_ports(running, ports)
        yield running
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # master: stops its workers, then itself
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(prefix, ignore_errors=True)


def _version(nginx: str) -> tuple[int, ...]:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(n) for n in found.groups()) if found else (0, 0, 0)


async def _wait_for_ports(running: Nginx, ports: tuple[int, ...], timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for port in ports:
        while True:
            if running.proc.returncode is not None:
                stderr = await running.proc.stderr.read() if running.proc.stderr else b""
                raise AssertionError(
                    f"nginx exited ({running.proc.returncode}):\n"
                    f"{stderr.decode(errors='replace')}\n{running.error_log}"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if loop.time() > deadline:
                    raise AssertionError(
                        f"nginx is not listening on {port}:\n{running.error_log}"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
