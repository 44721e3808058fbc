"""The checks behind deploy/check (run it through that script: it provides the venv).

Usage: check.py DEPLOY_DIR. Every check prints one line, `ok`, `FAIL` or `skip`, and the
last line is `deploy-check: N passed, M failed`. Exit status 1 when any check failed.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import yaml

ROOT = Path(__file__).resolve().parent.parent  # the repository (Rust sources, venv)
DEPLOY = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "deploy").resolve()
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent  # the venv's bin/
K8S_VERSIONS = ["1.30.0", "1.37.0"]  # oldest we promise, newest the validator knows
OPEN_FILES_LIMIT = 20_000  # each process can hold fewer open files than this
PROGRAMS = {  # program -> the Rust file whose clap `env = "..."` names it reads
    "conflist-proxy": ROOT / "proxy/src/config.rs",
    "conflist-server": ROOT / "subscriber-server/src/config.rs",
}
LISTEN_PORTS = {  # (program, env) -> container port
    ("conflist-proxy", "CONFLIST_WS_LISTEN"): 8080,
    ("conflist-proxy", "CONFLIST_ADMIN_LISTEN"): 9100,
    ("conflist-server", "CONFLIST_GRPC_LISTEN"): 50051,
    ("conflist-server", "CONFLIST_ADMIN_LISTEN"): 9101,
}

passed = failed = skipped = 0


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def check(name: str, fn: Callable[[], str | None]) -> None:
    global passed, failed, skipped
    try:
        detail = fn()
    except Skip as e:
        skipped += 1
        print(f"skip {name}: {e}", flush=True)
    except Fail as e:
        failed += 1
        print(f"FAIL {name}: {e}", flush=True)
    except Exception as e:  # a broken manifest may break the check itself: still a failure
        failed += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
    else:
        passed += 1
        print(f"ok   {name}" + (f" ({detail})" if detail else ""), flush=True)


def need(cond: object, msg: str) -> None:
    if not cond:
        raise Fail(msg)


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def load_all(p: Path) -> list[dict]:
    with open(p) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def tail(out: str, n: int = 6) -> str:
    lines = [l for l in out.strip().splitlines() if l.strip()]
    return " | ".join(lines[-n:])


def env_names(program: str) -> set[str]:
    return set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', PROGRAMS[program].read_text()))


def check_env_names(where: str, program: str, names: list[str]) -> None:
    known = env_names(program)
    need(known, f"no env names found in {rel(PROGRAMS[program])}")
    unknown = [n for n in names if (n.startswith("CONFLIST_") or n == "DATABASE_URL") and n not in known]
    need(not unknown, f"{where}: {program} reads no {', '.join(unknown)}")


def check_listen(where: str, program: str, env: dict[str, str], ports: set[int]) -> None:
    for (prog, name), port in LISTEN_PORTS.items():
        if prog != program:
            continue
        need(name in env, f"{where}: {name} not set (the default listens on 127.0.0.1 only)")
        need(env[name] == f"0.0.0.0:{port}", f"{where}: {name}={env[name]!r}, want 0.0.0.0:{port}")
        need(not ports or port in ports, f"{where}: port {port} of {name} is not a declared port")


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", text.strip())
    need(m, f"cannot read duration {text!r}")
    n, unit = int(m.group(1)), m.group(2)
    return n / 1000 if unit == "ms" else n * 60 if unit == "m" else n


# ---------------------------------------------------------------- Dockerfile

def dockerfile_stages() -> list[list[str]]:
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        need(stages, f"instruction before FROM: {line[:40]}")
        stages[-1].append(line)
    return stages


def c_dockerfile_build() -> str:
    stages = dockerfile_stages()
    need(len(stages) >= 2, f"{len(stages)} stage(s), want a multi-stage build")
    need(re.match(r"FROM rust:1\.95-bookworm AS builder$", stages[0][0], re.I), f"builder is {stages[0][0]!r}")
    need(stages[-1][0] == "FROM debian:bookworm-slim", f"runtime is {stages[-1][0]!r}")
    builder = " ".join(stages[0])
    need("cargo build --release --locked -p conflist-proxy -p conflist-server" in builder,
         "builder does not run cargo build --release --locked -p conflist-proxy -p conflist-server")
    return "rust:1.95-bookworm -> debian:bookworm-slim"


def c_dockerfile_runtime() -> str:
    final = dockerfile_stages()[-1]
    joined = "\n".join(final)
    users = [l.split(None, 1)[1] for l in final if l.upper().startswith("USER ")]
    need(users, "runtime stage has no USER (would run as root)")
    need(users[-1].split(":")[0] not in ("root", "0"), f"runtime runs as {users[-1]!r}")
    need("ca-certificates" in joined, "runtime does not install ca-certificates")
    need(not any(l.upper().startswith("ENTRYPOINT") for l in final), "ENTRYPOINT set: compose/k8s choose the program")
    copies = [l for l in final if l.upper().startswith("COPY --FROM")]
    for b in PROGRAMS:
        need(any(b in l and l.rstrip().endswith("/usr/local/bin/") for l in copies), f"{b} not copied to /usr/local/bin/")
    return f"USER {users[-1]}"


def c_dockerignore() -> None:
    p = DEPLOY / "Dockerfile.dockerignore"
    lines = {l.strip().rstrip("/") for l in p.read_text().splitlines() if l.strip() and not l.startswith("#")}
    for want in ("target", ".git"):
        need(want in lines or f"/{want}" in lines, f"{p.name} does not exclude {want}/")


# ---------------------------------------------------------------- compose

def compose() -> dict:
    docs = load_all(DEPLOY / "docker-compose.yml")
    need(len(docs) == 1, "docker-compose.yml must hold one YAML document")
    return docs[0]


def compose_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: str(v) for k, v in env.items()}


def compose_program(name: str, svc: dict) -> str | None:
    cmd = svc.get("command")
    first = cmd[0] if isinstance(cmd, list) and cmd else (cmd.split()[0] if isinstance(cmd, str) else None)
    return first if first in PROGRAMS else None


def c_compose_schema() -> str:
    r = run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
             str(DEPLOY / "docker-compose.yml")])
    need(r.returncode == 0, tail(r.stdout + r.stderr))
    return "check-jsonschema --builtin-schema vendor.compose-spec"


def c_compose_services() -> None:
    c = compose()
    need("version" not in c, "top-level `version:` is obsolete in the compose spec")
    s = c.get("services") or {}
    need({"postgres", "server", "proxy"} <= set(s), f"services are {sorted(s)}, want postgres, server, proxy")
    need(str(s["postgres"].get("image", "")).startswith("postgres:15"), "postgres is not postgres:15")
    hc = s["postgres"].get("healthcheck") or {}
    need("pg_isready" in str(hc.get("test")), "postgres healthcheck does not use pg_isready")
    need(compose_program("server", s["server"]) == "conflist-server", "server's command is not conflist-server")
    need(compose_program("proxy", s["proxy"]) == "conflist-proxy", "proxy's command is not conflist-proxy")
    dep = (s["server"].get("depends_on") or {})
    need(isinstance(dep, dict) and (dep.get("postgres") or {}).get("condition") == "service_healthy",
         "server does not depend on postgres being service_healthy")
    env = compose_env(s["server"])
    need(env.get("DATABASE_URL", "").startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"],
         "server's DATABASE_URL does not point at the postgres service")
    builds = [(n, v["build"]) for n, v in s.items() if "build" in v]
    need(builds, "no service builds the image")
    for n, b in builds:
        ctx = (DEPLOY / (b.get("context", ".") if isinstance(b, dict) else b)).resolve()
        df = ctx / (b.get("dockerfile", "Dockerfile") if isinstance(b, dict) else "Dockerfile")
        need(df.resolve() == (DEPLOY / "Dockerfile").resolve(), f"{n} builds {df}, not deploy/Dockerfile")
        need((ctx / "Cargo.toml").exists() or ctx == DEPLOY.parent, f"{n}'s build context {ctx} is not the repo root")


def c_compose_ports() -> str:
    published = []
    for name, svc in compose()["services"].items():
        for p in svc.get("ports") or []:
            if isinstance(p, dict):
                ip = p.get("host_ip")
                need(ip == "127.0.0.1", f"{name}: port {p.get('target')} published on {ip or 'all interfaces'}")
                published.append(f"{name}:{p.get('published')}")
            else:
                p = str(p)
                need(p.startswith("127.0.0.1:") and p.count(":") == 2,
                     f"{name}: port {p!r} is not published on 127.0.0.1 only")
                published.append(f"{name}:{p.split(':')[1]}")
    need(published, "nothing published")
    return ", ".join(published) + " on 127.0.0.1"


def c_compose_listen() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        prog = compose_program(name, svc)
        if prog is None:
            continue
        env = compose_env(svc)
        check_listen(f"compose {name}", prog, env, set())
        check_env_names(f"compose {name}", prog, list(env))
    penv = compose_env(services["proxy"])
    servers = [s for s in penv.get("CONFLIST_SERVERS", "").split(",") if s]
    need(servers, "proxy has no CONFLIST_SERVERS")
    for s in servers:
        m = re.fullmatch(r"https?://([^:/]+):(\d+)", s)
        need(m, f"proxy server {s!r} is not http://host:port")
        need(m.group(1) in services and compose_program(m.group(1), services[m.group(1)]) == "conflist-server",
             f"proxy server {s!r} is not a conflist-server service")
        need(int(m.group(2)) == 50051, f"proxy server {s!r} is not the gRPC port 50051")
    mc = int(penv.get("CONFLIST_MAX_CONNECTIONS", "10000"))
    need(mc < OPEN_FILES_LIMIT, f"proxy CONFLIST_MAX_CONNECTIONS={mc} is not below {OPEN_FILES_LIMIT}")
    nofile = ((services["proxy"].get("ulimits") or {}).get("nofile"))
    if nofile is not None:
        hard = nofile["hard"] if isinstance(nofile, dict) else nofile
        need(mc < int(hard) < OPEN_FILES_LIMIT, f"proxy nofile {hard} must lie between max connections {mc} and {OPEN_FILES_LIMIT}")


# ---------------------------------------------------------------- Kubernetes

def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[dict]:
    docs = []
    for p in k8s_files():
        docs += load_all(p)
    return docs


def workloads(kinds=("Deployment", "StatefulSet", "Job")) -> Iterator[dict]:
    return (d for d in k8s_docs() if d.get("kind") in kinds)


def pod_spec(w: dict) -> dict:
    return w["spec"]["template"]["spec"]


def containers(w: dict) -> list[dict]:
    return pod_spec(w).get("initContainers", []) + pod_spec(w)["containers"]


def kn(d: dict) -> str:
    return f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"


def program_of(c: dict) -> str | None:
    cmd = (c.get("command") or []) + (c.get("args") or [])
    return cmd[0] if cmd and cmd[0] in PROGRAMS else None


def plain_env(c: dict) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}


def one(kind: str, name: str) -> dict:
    found = [d for d in k8s_docs() if d.get("kind") == kind and d["metadata"]["name"] == name]
    need(len(found) == 1, f"want exactly one {kind}/{name}, found {len(found)}")
    return found[0]


def c_k8s_schema(p: Path) -> Callable[[], str]:
    def fn() -> str:
        args = [str(BIN / "kubernetes-validate"), "--strict", "--quiet"]
        for v in K8S_VERSIONS:
            args += ["-k", v]
        r = run(args + [str(p)])
        need(r.returncode == 0 and "ERROR" not in r.stdout + r.stderr, tail(r.stdout + r.stderr))
        return "kubernetes-validate --strict, " + ", ".join(K8S_VERSIONS)
    return fn


def c_kustomization() -> str:
    docs = load_all(K8S / "kustomization.yaml")
    need(len(docs) == 1, "kustomization.yaml must hold one document")
    k = docs[0]
    need(k.get("kind") == "Kustomization", "kind is not Kustomization")
    res = k.get("resources") or []
    for r in res:
        need((K8S / r).is_file(), f"resource {r} does not exist")
    need("secret.example.yaml" not in res, "secret.example.yaml is listed: apply -k would overwrite the real Secret")
    missing = [p.name for p in k8s_files() if p.name not in res and p.name != "secret.example.yaml"]
    need(not missing, f"not listed: {', '.join(missing)}")
    return f"{len(res)} resources"


def c_kustomize_build() -> str:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise Skip("kubectl not installed")
    r = run([kubectl, "kustomize", str(K8S)])
    need(r.returncode == 0, tail(r.stderr or r.stdout))
    kinds = [d.get("kind") for d in yaml.safe_load_all(r.stdout) if d]
    need("Secret" not in kinds, "the rendered kustomization contains a Secret")
    return "kubectl kustomize: " + ", ".join(sorted(kinds))


def c_k8s_probes() -> str:
    n = 0
    for w in workloads(("Deployment", "StatefulSet")):
        for c in pod_spec(w)["containers"]:
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
                pr = c.get(probe)
                need(pr, f"{kn(w)} container {c['name']} has no {probe}")
                get = pr.get("httpGet") or {}
                need(get.get("path") == path, f"{kn(w)} {probe} path is {get.get('path')!r}, want {path}")
                need(get.get("port") in ports, f"{kn(w)} {probe} port {get.get('port')!r} is not a container port")
            n += 1
    need(n, "no Deployment or StatefulSet found")
    return f"{n} containers"


def c_k8s_security() -> str:
    n = 0
    for w in workloads():
        ps = pod_spec(w).get("securityContext", {})
        for c in containers(w):
            sc = c.get("securityContext", {})
            nonroot = sc.get("runAsNonRoot", ps.get("runAsNonRoot"))
            need(nonroot is True, f"{kn(w)} container {c['name']}: runAsNonRoot is not true")
            need(sc.get("runAsUser", ps.get("runAsUser", 1)) != 0, f"{kn(w)} container {c['name']} runs as uid 0")
            need(sc.get("readOnlyRootFilesystem") is True, f"{kn(w)} container {c['name']}: readOnlyRootFilesystem is not true")
            need(sc.get("allowPrivilegeEscalation") is False, f"{kn(w)} container {c['name']}: allowPrivilegeEscalation is not false")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                need({"cpu", "memory"} <= set(res.get(part, {})), f"{kn(w)} container {c['name']}: no cpu/memory {part}")
            n += 1
    need(n, "no workloads found")
    return f"{n} containers: non-root, read-only root, requests+limits"


def c_k8s_env() -> str:
    n = 0
    for w in workloads():
        for c in containers(w):
            prog = program_of(c)
            need(prog, f"{kn(w)} container {c['name']} runs neither conflist-proxy nor conflist-server")
            names = [e["name"] for e in c.get("env", [])]
            check_env_names(kn(w), prog, names)
            db = [e for e in c.get("env", []) if e["name"] == "DATABASE_URL"]
            if prog == "conflist-server":
                need(db, f"{kn(w)}: no DATABASE_URL")
                ref = (db[0].get("valueFrom") or {}).get("secretKeyRef") or {}
                need(ref.get("name") == "conflist-db" and ref.get("key") == "database-url",
                     f"{kn(w)}: DATABASE_URL is not from Secret conflist-db key database-url")
            if w["kind"] != "Job":  # serving workloads listen on 0.0.0.0 on their declared ports
                ports = {p["containerPort"] for p in c.get("ports", [])}
                check_listen(kn(w), prog, plain_env(c), ports)
                grace = plain_env(c).get("CONFLIST_SHUTDOWN_GRACE")
                tgps = pod_spec(w).get("terminationGracePeriodSeconds", 30)
                if grace:
                    need(seconds(grace) + 5 <= tgps,
                         f"{kn(w)}: terminationGracePeriodSeconds {tgps} leaves no margin over CONFLIST_SHUTDOWN_GRACE {grace}")
            n += 1
    return f"{n} containers; env names exist in the binaries' config"


def c_k8s_server() -> str:
    sts = one("StatefulSet", "conflist-server")
    svc = one("Service", "conflist-server")
    need(svc["spec"].get("clusterIP") == "None", "Service conflist-server is not headless (clusterIP: None)")
    need(sts["spec"].get("serviceName") == "conflist-server", "StatefulSet serviceName is not conflist-server")
    need(sts["spec"].get("replicas", 1) >= 1, "no server replicas")
    job = one("Job", "conflist-migrate")
    cmd = (job["spec"]["template"]["spec"]["containers"][0].get("command") or []) + \
          (job["spec"]["template"]["spec"]["containers"][0].get("args") or [])
    need(cmd == ["conflist-server", "db", "migrate"], f"migrate job runs {cmd}")
    secrets = [d for d in load_all(K8S / "secret.example.yaml") if d.get("kind") == "Secret"]
    need(secrets and secrets[0]["metadata"]["name"] == "conflist-db"
         and "database-url" in (secrets[0].get("stringData") or secrets[0].get("data") or {}),
         "secret.example.yaml does not define conflist-db / database-url")
    return f"StatefulSet replicas {sts['spec'].get('replicas', 1)}, headless Service, migrate Job, example Secret"


def c_k8s_services() -> str:
    out = []
    for svc in (d for d in k8s_docs() if d.get("kind") == "Service"):
        sel = svc["spec"].get("selector") or {}
        targets = [w for w in workloads(("Deployment", "StatefulSet"))
                   if sel and sel.items() <= w["spec"]["template"]["metadata"].get("labels", {}).items()]
        need(targets, f"{kn(svc)} selects no workload")
        for w in targets:
            ms = w["spec"]["selector"].get("matchLabels", {})
            need(ms.items() <= w["spec"]["template"]["metadata"]["labels"].items(), f"{kn(w)} selector does not match its pods")
            cports = {p.get("name") for c in pod_spec(w)["containers"] for p in c.get("ports", [])} | \
                     {p["containerPort"] for c in pod_spec(w)["containers"] for p in c.get("ports", [])}
            for p in svc["spec"]["ports"]:
                need(p.get("targetPort", p["port"]) in cports, f"{kn(svc)} port {p['port']} targets no port of {kn(w)}")
        out.append(f"{svc['metadata']['name']}->{','.join(kn(w) for w in targets)}")
    need(out, "no Services")
    return "; ".join(out)


def c_k8s_server_list() -> str:
    sts = one("StatefulSet", "conflist-server")
    n = sts["spec"].get("replicas", 1)
    name, svc = sts["metadata"]["name"], sts["spec"]["serviceName"]
    want = [f"http://{name}-{i}.{svc}:50051" for i in range(n)]
    proxy = one("Deployment", "conflist-proxy")
    for c in pod_spec(proxy)["containers"]:
        got = [s.strip() for s in plain_env(c).get("CONFLIST_SERVERS", "").split(",") if s.strip()]
        need(got == want, f"CONFLIST_SERVERS is {got}, want {want} (StatefulSet replicas {n})")
        mc = int(plain_env(c).get("CONFLIST_MAX_CONNECTIONS", "10000"))
        need(mc < OPEN_FILES_LIMIT, f"CONFLIST_MAX_CONNECTIONS={mc} is not below {OPEN_FILES_LIMIT} open files")
    return f"{n} servers; proxy max connections below {OPEN_FILES_LIMIT}"


def c_readme() -> None:
    text = (DEPLOY / "README.md").read_text()
    for want in ("docker build -f deploy/Dockerfile", "docker-compose.yml", "kubectl apply -k deploy/k8s",
                 "20 000", "rendezvous"):
        need(want in text, f"README.md does not mention {want!r}")


def main() -> int:
    need_dir = DEPLOY.is_dir() and K8S.is_dir()
    if not need_dir:
        print(f"deploy-check: {DEPLOY} has no k8s/ folder")
        return 2
    print(f"deploy-check: {rel(DEPLOY)}", flush=True)
    check("Dockerfile: multi-stage build of both binaries", c_dockerfile_build)
    check("Dockerfile: runtime non-root, ca-certificates, binaries in /usr/local/bin, no ENTRYPOINT", c_dockerfile_runtime)
    check("Dockerfile.dockerignore: excludes target/ and .git", c_dockerignore)
    check("compose: schema", c_compose_schema)
    check("compose: services, healthchecks, dependencies, build", c_compose_services)
    check("compose: ports published on 127.0.0.1 only", c_compose_ports)
    check("compose: 0.0.0.0 listeners, known env names, proxy -> server, open files", c_compose_listen)
    for p in k8s_files():
        check(f"k8s schema: {p.name}", c_k8s_schema(p))
    check("k8s: kustomization.yaml lists the manifests (not the example Secret)", c_kustomization)
    check("k8s: kustomization renders", c_kustomize_build)
    check("k8s: readiness /readyz and liveness /livez on every Deployment/StatefulSet", c_k8s_probes)
    check("k8s: security context and resources on every container", c_k8s_security)
    check("k8s: env (0.0.0.0 listeners, DATABASE_URL from Secret, shutdown grace)", c_k8s_env)
    check("k8s: server StatefulSet, headless Service, migrate Job, example Secret", c_k8s_server)
    check("k8s: Services select pods and target declared ports", c_k8s_services)
    check("k8s: proxy CONFLIST_SERVERS names every StatefulSet pod", c_k8s_server_list)
    check("README.md: build, compose, kubectl, scaling notes", c_readme)
    summary = f"deploy-check: {passed} passed, {failed} failed"
    print(summary + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
