"""The image, really built and run: podman builds the Dockerfile, a payment goes through it.

`./dev test` prepares, before pytest starts, everything the build needs, so
that it needs no network at all (it runs with `--network none`):

* .container/wheelhouse: the wheels of requirements.lock, and setuptools
  (farebox's build backend, pinned in requirements-dev.lock), downloaded with
  their hashes; pip in the build stage takes them from there (`PIP_NO_INDEX`,
  `PIP_FIND_LINKS`, mounted with podman's build-time `--volume`);
* the base image localhost/farebox-base:bookworm: no container registry is
  reachable where the tests run, so it is a Debian bookworm made by
  debootstrap (with python3, python3-venv and python3-pip) and imported
  into podman, given to the Dockerfile's `BASE` build argument.

Then the image runs as the README says (a policies mount, a key file owned by
uid 10001, a volume for the state), on the host's network so that it reaches
the devnet and the upstream this test starts, on free ports. Its HEALTHCHECK
must pass, an unpaid request get a 402, a paid one the upstream's answer, and
`podman stop` must end it with the image's STOPSIGNAL, drained, exit code 0.

podman runs containers with runc (crun fails on some kernels' cgroups) and
with no default ulimits (some sandboxes refuse raising them): both in a
containers.conf given through CONTAINERS_CONF. Where no container can run
(no podman or runc, not root, podman cannot start the base image) the test
skips and says why; a build that fails on a machine that runs containers is
the Dockerfile's fault and fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from bsv import PrivateKey

from gateway import keys
from tests.chainkit import brc121_headers, faucet
from tests.conftest import Upstream
from tests.redis_servers import free_port

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / ".container" / "wheelhouse"
WHEELHOUSE_STAMP = WHEELHOUSE / ".locks.sha256"  # written by ./dev once the download is whole
BASE = "localhost/farebox-base:bookworm"  # made by ./dev test
IMAGE = "localhost/farebox:test"  # the one name this test tags; the previous image is removed
UID = 10001  # the image's user (Dockerfile), who must own the key file and the state
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'


def podman(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


async def apodman(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """podman from a coroutine: the devnet and the upstream live on this loop."""
    proc = await asyncio.create_subprocess_exec(
        "podman", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace").strip()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment podman runs in here, or a skip that says why there is none."""
    for tool in ("podman", "runc"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (./dev test installs it as root): no container")
    if os.geteuid() != 0:
        pytest.skip("not root: the base image and the runc containers need root here")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    if not WHEELHOUSE_STAMP.exists() or podman("image", "exists", BASE, env=env).returncode:
        pytest.fail(
            f"the offline build's wheelhouse ({WHEELHOUSE.relative_to(ROOT)}) or base image "
            f"({BASE}) is missing: ./dev test prepares both before pytest starts"
        )
    smoke = podman("run", "--rm", "--network", "none", BASE, "true", env=env, timeout=60)
    if smoke.returncode:
        pytest.skip(f"podman cannot run a container on this machine: {smoke.stderr.strip()}")
    return env


@pytest.fixture(scope="module")
def image(engine: dict[str, str]) -> Iterator[str]:
    """The Dockerfile built offline; tagged IMAGE, the image it replaced removed."""
    before = podman("image", "inspect", "--format", "{{.Id}}", IMAGE, env=engine).stdout.strip()
    started = time.monotonic()
    build = podman(
        "build", "--format", "docker", "--layers=false", "--force-rm", "--pull=never",
        "--network", "none", "--build-arg", f"BASE={BASE}",
        "--volume", f"{WHEELHOUSE}:/wheels:ro",
        "--build-arg", "PIP_NO_INDEX=1", "--build-arg", "PIP_FIND_LINKS=/wheels",
        "--tag", IMAGE, str(ROOT),
        env=engine, timeout=900,
    )  # fmt: skip
    assert build.returncode == 0, f"podman build failed:\n{build.stdout[-4000:]}{build.stderr}"
    print(f"podman build: {time.monotonic() - started:.0f} s")
    after = podman("image", "inspect", "--format", "{{.Id}}", IMAGE, env=engine).stdout.strip()
    if before and before != after:
        podman("rmi", before, env=engine)  # untagged now: no image piles up
    yield IMAGE


def test_image_is_configured_as_the_dockerfile_says(image: str, engine: dict[str, str]) -> None:
    got = podman("image", "inspect", image, env=engine)
    assert got.returncode == 0, got.stderr
    (inspect,) = json.loads(got.stdout)
    config = inspect["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"] + config["Cmd"] == ["farebox", "serve"]
    # Kept only in the docker format (an OCI-format build drops it with a warning).
    assert "/healthz" in inspect["Healthcheck"]["Test"][-1]
    # The build stage's wheels and tools stayed behind: only the venv came over.
    run = podman(
        "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c",
        "import importlib.util as u, sys; "
        "print(sys.prefix, [m for m in ('pip', 'setuptools') if u.find_spec(m)])",
        env=engine, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.split(maxsplit=1) == ["/opt/farebox", "[]\n"]


async def test_pays_through_the_running_container(
    image: str, engine: dict[str, str], tmp_path: Path, upstream: Upstream, devnet_http
) -> None:
    url, _ = devnet_http
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(
        f"services:\n  s:\n    upstream: {upstream.url}\n"
        "    routes:\n      - {path: /page/*, price: 30, grant: {lasts: 1h}}\n"
    )
    # The key file as the README has it: mode 0600, owned by the image's user.
    key_file = tmp_path / "farebox.key"
    server_pub = keys.generate(key_file).public_key().hex()
    os.chown(key_file, UID, UID)
    state = tmp_path / "state"  # -v farebox-data:/var/lib/farebox
    state.mkdir(mode=0o700)
    os.chown(state, UID, UID)
    port = free_port()
    name = f"farebox-test-{uuid.uuid4().hex[:12]}"
    code, out = await apodman(
        "run", "--detach", "--name", name, "--network", "host",
        "--volume", f"{policies}:/etc/farebox/policies:ro",
        "--volume", f"{key_file}:/run/secrets/farebox_key:ro",
        "--volume", f"{state}:/var/lib/farebox",
        "--env", f"FAREBOX_PORT={port}", "--env", f"FAREBOX_DEVNET_URL={url}",
        image,
        env=engine,
    )  # fmt: skip
    try:
        assert code == 0, out
        # The image's own HEALTHCHECK, run by podman (no systemd timer runs it here).
        deadline = time.monotonic() + 60
        while (await apodman("healthcheck", "run", name, env=engine))[0] != 0:
            state_now = (
                await apodman("inspect", "--format", "{{.State.Status}}", name, env=engine)
            )[1]
            logs = (await apodman("logs", name, env=engine))[1]
            assert state_now == "running", f"the container stopped ({state_now}):\n{logs}"
            assert time.monotonic() < deadline, f"the HEALTHCHECK never passed:\n{logs}"
            await asyncio.sleep(0.5)
        health = await apodman("inspect", "--format", "{{.State.Health.Status}}", name, env=engine)
        assert health == (0, "healthy")
        assert list((state / "token-keys").glob("*.pem")), "token keys are not in the volume"

        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/page/1", headers={"Accept": "application/json"}) as r:
                assert r.status == 402
            assert upstream.paths == []
            client = PrivateKey()
            parent = await faucet(url, client, 100_000)
            headers, txid = brc121_headers(server_pub, client, parent, 30)
            async with http.get(f"{base}/page/1", headers=headers) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["path"] == "/page/1"  # the upstream's answer
                assert r.headers["X-Upstream"] == "yes"
        assert upstream.paths == ["/page/1"]

        # `podman stop`: the image's STOPSIGNAL (SIGTERM), a drain, exit code 0,
        # well before podman would kill it.
        started = time.monotonic()
        code, out = await apodman("stop", "--time", "35", name, env=engine, timeout=60)
        assert code == 0, out
        assert time.monotonic() - started < 30, "podman stop had to kill it"
        exit_code = await apodman("inspect", "--format", "{{.State.ExitCode}}", name, env=engine)
        logs = (await apodman("logs", name, env=engine))[1]
        assert exit_code == (0, "0"), logs
        assert "draining" in logs, logs
        assert txid in logs, "the payment is not in the container's log"
    finally:
        await apodman("rm", "--force", "--volumes", name, env=engine)
