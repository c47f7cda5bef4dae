"""docker-compose.yml, the Dockerfile and .env.example, checked without Docker.

Docker does not run where the tests run, so the compose file is parsed with PyYAML and
its pieces are run directly: the command lines its containers run, with the environment
they get. Compose's ``${VAR}`` interpolation is done here from .env.example's values
(with test values for the database), the ``postgres`` host is swapped for the test
PostgreSQL server, and each named volume becomes a temporary folder.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import FLOW, POSTGRES_ENV, postgres_database
from sqlalchemy.engine import make_url

from autosculpt.search.cli import build_parser
from autosculpt.search.study.quota import COUNTED, counting

ROOT = Path(__file__).resolve().parents[1]
AUTOSCULPT = str(Path(sys.executable).with_name("autosculpt"))  # the console script, the image's ENTRYPOINT
SERVICES = {"postgres", "search", "worker", "report"}
# Compose interpolation: $$ is a literal $, ${NAME}, ${NAME:-default}, ${NAME:?error}, $NAME.
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:[-?])([^}]*))?\}|\$(\w+)")



def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def interpolate(value, variables: dict[str, str]):
    """``value`` (a string, or lists and dicts of them) as compose interpolates it."""
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1) or match.group(4), match.group(2), match.group(3)
        if variables.get(name):
            return variables[name]
        assert operator != ":?", f"compose would stop: {name} unset ({argument})"
        return argument if operator == ":-" else ""

    return VARIABLE.sub(substitute, value) if isinstance(value, str) else value


def invocations(service: dict) -> list[list[str]]:
    """The arguments of every ``autosculpt`` command a service runs (without the program name)."""
    if service.get("entrypoint") == ["sh", "-c"]:
        script = service["command"][0].replace("\\\n", " ")
        return [shlex.split(re.split(r"[;>\n]", part)[0]) for part in script.split("autosculpt ")[1:]]
    return [service["command"]]


def test_services_volumes_and_dependencies():
    spec = compose()
    services = spec["services"]
    assert set(services) == SERVICES
    named = set(spec["volumes"])

    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert "pgdata:/var/lib/postgresql/data" in postgres["volumes"] and "pgdata" in named
    assert set(postgres["environment"]) == {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}

    for name in ("search", "worker"):
        service = services[name]
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert {"artifacts:/data/artifacts", "cache:/data/cache"} <= set(service["volumes"])
        assert service["environment"]["AUTOSCULPT_STORAGE"] == (
            "postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres:5432/${POSTGRES_DB}")
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # so that --scale worker=N works
    assert worker["depends_on"]["search"] == {"condition": "service_started"}
    assert worker["command"] == ["worker", "${AUTOSCULPT_STUDY}", "--quiet"]
    assert "exports:/data/exports" in services["search"]["volumes"]
    assert services["report"]["volumes"] == ["exports:/data/exports:ro"]
    assert {"artifacts", "cache", "exports"} <= named
    for service in services.values():  # every volume is a named one, none a folder of the host
        assert all(mount.split(":")[0] in named for mount in service.get("volumes", []))


def test_every_variable_is_defined_in_env_example():
    used = {m.group(1) or m.group(4) for m in VARIABLE.finditer((ROOT / "docker-compose.yml").read_text()) if m.group(0) != "$$"}
    assert used and used <= set(env_example()), f"missing from .env.example: {sorted(used - set(env_example()))}"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_commands_parse_with_the_real_cli():
    """Every autosculpt command line of the compose file, interpolated, is accepted by the CLI's parser."""
    parser = build_parser()
    services = interpolate(compose()["services"], env_example())
    used = []
    for name in ("search", "worker", "report"):
        for argv in invocations(services[name]):
            args = parser.parse_args(argv)
            assert args.command == argv[0]
            used.append(argv[0])
    assert used == ["trials", "resume", "search", "worker", "serve"]


def test_dockerfile_installs_from_pyproject():
    dockerfile = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = [line.strip() for line in dockerfile.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert lines[-2:] == ['ENTRYPOINT ["autosculpt"]', 'CMD ["--help"]']
    assert any(line.startswith("USER ") and line != "USER root" for line in lines)
    install = [shlex.split(line.split("pip install", 1)[1].split("&&")[0]) for line in lines if "pip install" in line]
    assert len(install) == 1
    words = install[0]
    assert words[words.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert "." in words and not any("==" in word or word.startswith("-r") for word in words)  # versions from pyproject only
    assert any(dependency.startswith("torch==") for dependency in project["project"]["dependencies"])  # one exact +cpu build
    copied = {line.split()[1] for line in lines if line.startswith("COPY ")}
    assert "pyproject.toml" in copied and set(project["tool"]["setuptools"]["package-dir"].values()) <= copied
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {".git", ".env", "venv/", ".venv/", "studies/", "exports/", ".autosculpt-cache/"} <= set(ignored)
    assert not copied & {pattern.rstrip("/") for pattern in ignored}




def test_the_image_install_holds_every_package():
    """The image installs non-editably (``pip install .``), which takes only the packages
    pyproject lists: every folder with an ``__init__.py`` under a mapped one must be listed."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *parts)))
    assert found and found <= set(setuptools["packages"])
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=f"set {POSTGRES_ENV} to run against PostgreSQL (CI does)")
def test_container_command_lines_run_a_study(tmp_path, session_cache):
    """search, worker and report as their containers run them; then search and worker once more, as on a restart."""
    url, drop = postgres_database()
    try:
        _run_the_containers_pieces(tmp_path, session_cache, make_url(url))
    finally:
        drop()


def _run_the_containers_pieces(tmp_path: Path, cache: Path, database) -> None:
    server = make_url(os.environ[POSTGRES_ENV])
    password = f"pw-{uuid.uuid4().hex}"  # the server trusts local users; this only has to stay unprinted
    variables = {**env_example(), "POSTGRES_USER": server.username, "POSTGRES_PASSWORD": password,
                 "POSTGRES_DB": database.database, "AUTOSCULPT_STUDY": "compose", "AUTOSCULPT_BUDGET_MS": "50",
                 "AUTOSCULPT_TRIALS": "3", "AUTOSCULPT_PRESET": "smoke"}
    services = interpolate(compose()["services"], variables)
    folders = {"artifacts": tmp_path / "artifacts", "cache": cache, "exports": tmp_path / "exports"}

    def piece(name: str) -> tuple[list[str], dict]:
        """The argv and environment of service ``name``'s container, its volumes mapped to folders here."""
        service = services[name]
        argv = [*service["entrypoint"], service["command"][0]] if "entrypoint" in service else [AUTOSCULPT, *service["command"]]
        env = {**os.environ, **service.get("environment", {}), "PATH": f"{Path(AUTOSCULPT).parent}{os.pathsep}{os.environ['PATH']}"}
        for mount in service.get("volumes", []):
            volume, target = mount.split(":")[:2]
            folders[volume].mkdir(exist_ok=True)
            argv = [arg.replace(target, str(folders[volume])) for arg in argv]
            env = {key: value.replace(target, str(folders[volume])) for key, value in env.items()}
        if "AUTOSCULPT_STORAGE" in env:
            env["AUTOSCULPT_STORAGE"] = make_url(env["AUTOSCULPT_STORAGE"]).set(host=server.host, port=server.port or 5432) \
                .render_as_string(hide_password=False)
        return argv, env

    outputs = []

    def run(name: str, timeout: float = 600) -> subprocess.CompletedProcess:
        argv, env = piece(name)
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)
        outputs.append(done.stdout + done.stderr)
        return done

    # A worker before the study exists fails (and its restart policy brings it back).
    early = run("worker")
    assert early.returncode == 2 and "no study named 'compose'" in early.stderr

    argv, env = piece("search")
    with open(tmp_path / "search.log", "w+") as log:
        search = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
        storage = env["AUTOSCULPT_STORAGE"]
        try:
            while "compose" not in optuna.get_all_study_names(storage) and search.poll() is None:
                time.sleep(2)
            worker = run("worker")  # joins the study while search runs it
            search.wait(timeout=600)
        finally:
            search.kill()
        log.seek(0)
        outputs.append(log.read())
    assert search.returncode in FLOW, outputs[-1][-3000:]
    assert worker.returncode == 0, worker.stderr[-3000:]
    study = optuna.load_study(study_name="compose", storage=storage)
    assert counting(study.get_trials(states=COUNTED), 3) == 3  # repeats are free, as the quota counts
    assert (folders["exports"] / "compose" / "report.html").exists() and (folders["exports"] / "compose" / "model.onnx").exists()

    # Restarted: search resumes the stored study (nothing left to run) and exports again; a worker has nothing to do.
    again = run("search")
    assert again.returncode in FLOW and "resuming compose" in again.stderr, again.stderr[-3000:]
    worker = run("worker")
    assert worker.returncode == 0 and "0 trials finished" in worker.stdout

    argv, env = piece("report")
    argv[argv.index("--host") + 1], argv[argv.index("--port") + 1] = "127.0.0.1", "0"
    report = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        port = int(report.stdout.readline().split("http://127.0.0.1:")[1].split("/")[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/compose/report.html")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == (folders["exports"] / "compose" / "report.html").read_bytes()
    finally:
        report.terminate()
        report.wait(timeout=10)

    assert not [output for output in outputs if password in output], "the storage password was printed"
    assert not [path for path in folders["exports"].rglob("*") if path.is_file() and password.encode() in path.read_bytes()]
