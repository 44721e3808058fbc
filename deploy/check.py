"""The checks behind deploy/check (run it through that script: it provides the venv).

Usage: check.py DEPLOY_DIR. Every check prints one line, `ok`, `FAIL` or `skip`, and the
last line is `deploy-check: N passed, M failed`. Exit status 1 when any check failed.

The generic checks are the tools': check-jsonschema (compose-spec schema), kubernetes-validate
(Kubernetes OpenAPI schemas, strict), hadolint (Dockerfile), haproxy -c and kubectl kustomize
when installed. What is left here is what only this project can know: that the environment
names are ones the binaries read (from their `--help`), that the proxies' server lists and
the load balancer's backends match the services defined, and that the grace periods fit the
programs' drain and shutdown times. Durations are read with pytimeparse2.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytimeparse2
import yaml

ROOT = Path(__file__).resolve().parent.parent  # the repository (Rust sources, venv)
DEPLOY = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "deploy").resolve()
K8S = DEPLOY / "k8s"
TOOLS = Path(sys.executable).parent  # the venv's bin/
# The binaries whose --help says which env names exist: scripts/test builds them first.
BIN_DIR = Path(os.environ.get("CONFLIST_BIN_DIR")
               or Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "debug")
K8S_VERSIONS = ["1.30.0", "1.37.0"]  # oldest we promise, newest the validator knows
OPEN_FILES_LIMIT = 20_000  # each process can hold fewer open files than this
MARGIN = 5  # seconds a grace period keeps above preStop + drain + shutdown grace
PROXY, SERVER = "conflist-proxy", "conflist-server"
PROGRAMS = (PROXY, SERVER)
LISTEN_PORTS = {  # (program, env) -> container port
    (PROXY, "CONFLIST_WS_LISTEN"): 8080,
    (PROXY, "CONFLIST_ADMIN_LISTEN"): 9100,
    (SERVER, "CONFLIST_GRPC_LISTEN"): 50051,
    (SERVER, "CONFLIST_ADMIN_LISTEN"): 9101,
}
# The openssl line deploy/README.md gives for the self-signed TLS example (run by the
# haproxy check on a scratch copy, so the documented command is known to work).
OPENSSL_SELF_SIGNED = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                       "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]

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


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)


def tail(out: str, n: int = 6) -> str:
    lines = [l for l in out.strip().splitlines() if l.strip()]
    return " | ".join(lines[-n:])


def seconds(text: str, what: str) -> float:
    value = pytimeparse2.parse(str(text).strip())
    need(value is not None, f"{what}: cannot read duration {text!r}")
    return float(value)


# ---------------------------------------------------------------- the binaries' --help

@functools.cache
def help_text(program: str, sub: tuple[str, ...] = ()) -> str:
    exe = BIN_DIR / program
    need(exe.is_file(), f"{rel(exe)} not built (cargo build --bins), so its env names are unknown")
    r = run([str(exe), *sub, "--help"], env={"PATH": os.environ.get("PATH", "/usr/bin")})
    need(r.returncode == 0, f"`{program} {' '.join(sub)} --help` failed: {tail(r.stderr or r.stdout, 2)}")
    return r.stdout


@functools.cache
def options(program: str, sub: tuple[str, ...] = ()) -> dict[str, str | None]:
    """env name -> default value, from the program's (and subcommand's) --help."""
    out: dict[str, str | None] = {}
    for text in {help_text(program), help_text(program, sub)}:
        for block in re.split(r"\n(?=\s*(?:-\w, )?--[\w-])", text):
            env = re.search(r"\[env: ([A-Z0-9_]+)=", block)
            if env:
                default = re.search(r"\[default: ([^\]]*)\]", block)
                out[env.group(1)] = default.group(1) if default else None
    return out


def subcommand(cmd: list[str]) -> tuple[str, tuple[str, ...]]:
    """(program, subcommand words) of a container command; checks the subcommand exists."""
    need(cmd and cmd[0] in PROGRAMS, f"runs {cmd[:1]}, neither {PROXY} nor {SERVER}")
    words = []
    for w in cmd[1:]:
        if w.startswith("-"):
            break
        words.append(w)
    help_text(cmd[0], tuple(words))  # fails when the subcommand does not exist
    return cmd[0], tuple(words)


def check_env_names(where: str, program: str, sub: tuple[str, ...], names: list[str]) -> None:
    known = options(program, sub)
    unknown = sorted({n for n in names if (n.startswith("CONFLIST_") or n == "DATABASE_URL") and n not in known})
    need(not unknown, f"{where}: {program} {'(' + ' '.join(sub) + ') ' if sub else ''}"
                      f"reads no {', '.join(unknown)} (not in its --help)")


def setting(program: str, env: dict[str, str], name: str) -> str:
    """The value a serving program runs with: the env's, else the --help default."""
    if name in env:
        return env[name]
    default = options(program).get(name)
    need(default is not None, f"{name} is neither set nor has a default in {program} --help")
    return default


def check_listen(where: str, program: str, env: dict[str, str], ports: set[int]) -> None:
    for (prog, name), port in LISTEN_PORTS.items():
        if prog != program:
            continue
        need(name in env, f"{where}: {name} not set (the default listens on 127.0.0.1 only)")
        need(env[name] == f"0.0.0.0:{port}", f"{where}: {name}={env[name]!r}, want 0.0.0.0:{port}")
        need(not ports or port in ports, f"{where}: port {port} of {name} is not a declared port")


def check_max_connections(where: str, env: dict[str, str], nofile: int | None = None) -> None:
    mc = int(setting(PROXY, env, "CONFLIST_MAX_CONNECTIONS"))
    need(mc < OPEN_FILES_LIMIT, f"{where}: CONFLIST_MAX_CONNECTIONS={mc} is not below {OPEN_FILES_LIMIT} open files")
    if nofile is not None:
        need(mc < nofile < OPEN_FILES_LIMIT, f"{where}: nofile {nofile} must lie between max connections {mc} and {OPEN_FILES_LIMIT}")


def shutdown_need(program: str, env: dict[str, str], where: str) -> tuple[float, str]:
    """Seconds a serving program may take after SIGTERM (drain + grace), and how it adds up."""
    grace = seconds(setting(program, env, "CONFLIST_SHUTDOWN_GRACE"), f"{where} CONFLIST_SHUTDOWN_GRACE")
    if program == SERVER:
        drain = seconds(env.get("CONFLIST_DRAIN_TIMEOUT") or setting(program, env, "CONFLIST_DRAIN_TIMEOUT"),
                        f"{where} CONFLIST_DRAIN_TIMEOUT")
        return drain + grace, f"drain {drain:g}s + grace {grace:g}s"
    return grace, f"grace {grace:g}s"


def keepalive(env: dict[str, str]) -> float:
    return seconds(setting(PROXY, env, "CONFLIST_KEEPALIVE_INTERVAL"), "CONFLIST_KEEPALIVE_INTERVAL")


def endpoint(url: str, where: str) -> tuple[str, int]:
    m = re.fullmatch(r"https?://([^:/]+):(\d+)/?", url.strip())
    need(m, f"{where}: server {url!r} is not http(s)://host:port")
    return m.group(1), int(m.group(2))


# ---------------------------------------------------------------- Dockerfile

def dockerfile_stages() -> list[list[str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())  # join continuation lines
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


def c_hadolint() -> str:
    r = run([str(TOOLS / "hadolint"), "--no-color", str(DEPLOY / "Dockerfile")])
    need(r.returncode == 0, tail(r.stdout + r.stderr))
    return tail(run([str(TOOLS / "hadolint"), "--version"]).stdout, 1)


def c_dockerfile() -> str:
    stages = dockerfile_stages()
    need(len(stages) >= 2, f"{len(stages)} stage(s), want a build stage and a runtime stage")
    builder = " ".join(" ".join(s) for s in stages[:-1])
    need(re.search(r"cargo build --release\b", builder), "no `cargo build --release` in the build stage")
    for p in PROGRAMS:
        need(f"-p {p}" in builder, f"the build stage does not build {p}")
    need("CARGO_PROFILE_RELEASE_STRIP=symbols" in builder or re.search(r"\bstrip\b", builder),
         "binaries are not stripped (CARGO_PROFILE_RELEASE_STRIP=symbols or strip)")
    final = stages[-1]
    copies = [l for l in final if l.upper().startswith("COPY --FROM")]
    for p in PROGRAMS:
        need(any(p in l and l.rstrip().endswith("/usr/local/bin/") for l in copies), f"{p} not copied to /usr/local/bin/")
    users = [l.split(None, 1)[1] for l in final if l.upper().startswith("USER ")]
    need(users, "runtime stage has no USER (would run as root)")
    uid = users[-1].split(":")[0]
    need(uid.isdigit() and uid != "0", f"runtime USER {users[-1]!r}: want a numeric non-root uid (runAsNonRoot checks it)")
    pods = [(kn(w), (pod_spec(w).get("securityContext") or {}).get("runAsUser")) for w in workloads()]
    wrong = [f"{n} runAsUser {u}" for n, u in pods if u is not None and str(u) != uid]
    need(not wrong, f"image runs as uid {uid}, but {', '.join(wrong)}")
    return f"stripped release build; USER {users[-1]}, the k8s runAsUser"


def c_dockerignore() -> None:
    p = DEPLOY / "Dockerfile.dockerignore"
    lines = {l.strip().rstrip("/") for l in p.read_text().splitlines() if l.strip() and not l.startswith("#")}
    for want in ("target", ".git"):
        need(want in lines or f"/{want}" in lines, f"{p.name} does not exclude {want}/")


def c_no_private_keys() -> str:
    ignored = {l.strip().strip("/") for l in (DEPLOY / ".gitignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")} if (DEPLOY / ".gitignore").exists() else set()
    need("tls" in ignored, "deploy/.gitignore does not ignore tls/ (where the TLS example's key is made)")
    found = []
    for p in DEPLOY.rglob("*"):
        if p.is_file() and "tls" not in p.relative_to(DEPLOY).parts[:1]:
            if re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", p.read_text(errors="replace")):
                found.append(rel(p))
    need(not found, f"private key in {', '.join(found)}")
    return "tls/ is git-ignored; no private key outside it"


# ---------------------------------------------------------------- compose

def compose() -> dict:
    docs = load_all(DEPLOY / "docker-compose.yml")
    need(len(docs) == 1, "docker-compose.yml must hold one YAML document")
    return docs[0]


def compose_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    # ${VAR:-default}: the default is what the stack runs with unless the shell says otherwise
    return {k: re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


def compose_cmd(svc: dict) -> list[str]:
    cmd = svc.get("command") or []
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def compose_programs() -> Iterator[tuple[str, dict, str, tuple[str, ...]]]:
    """(name, service, program, subcommand) of every service that runs one of the binaries."""
    for name, svc in compose()["services"].items():
        cmd = compose_cmd(svc)
        if cmd and cmd[0] in PROGRAMS:
            prog, sub = subcommand(cmd)
            yield name, svc, prog, sub


def compose_serving(program: str) -> dict[str, dict]:
    return {n: s for n, s, p, sub in compose_programs() if p == program and not sub}


def replicas(svc: dict) -> int:
    return int((svc.get("deploy") or {}).get("replicas", svc.get("scale", 1)))


def c_compose_schema() -> str:
    r = run([str(TOOLS / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
             str(DEPLOY / "docker-compose.yml")])
    need(r.returncode == 0, tail(r.stdout + r.stderr))
    return "check-jsonschema --builtin-schema vendor.compose-spec"


def c_compose_env() -> str:
    n = 0
    for name, svc, prog, sub in compose_programs():
        env = compose_env(svc)
        check_env_names(f"compose {name}", prog, sub, list(env))
        if not sub:
            check_listen(f"compose {name}", prog, env, set())
            if prog == PROXY:
                nofile = (svc.get("ulimits") or {}).get("nofile")
                hard = None if nofile is None else int(nofile["hard"] if isinstance(nofile, dict) else nofile)
                check_max_connections(f"compose {name}", env, hard)
        n += 1
    need(n, "no service runs conflist-proxy or conflist-server")
    return f"{n} services"


def c_compose_servers() -> str:
    services = compose()["services"]
    servers, proxies = compose_serving(SERVER), compose_serving(PROXY)
    need(len(servers) >= 2, f"{len(servers)} server service(s): failover needs two")
    need(len(proxies) >= 2, f"{len(proxies)} proxy service(s), want two behind the load balancer")
    ports = {n: int(compose_env(s)["CONFLIST_GRPC_LISTEN"].rsplit(":", 1)[1]) for n, s in servers.items()}
    for pname, psvc in proxies.items():
        env, seen = compose_env(psvc), set()
        static = [s for s in env.get("CONFLIST_SERVERS", "").split(",") if s.strip()]
        dns = [s for s in env.get("CONFLIST_SERVERS_DNS", "").split(",") if s.strip()]
        need(static or dns, f"{pname} names no servers (CONFLIST_SERVERS or CONFLIST_SERVERS_DNS)")
        for url in static + dns:
            host, port = endpoint(url, pname)
            need(host in servers, f"{pname}: {url} is not a conflist-server service ({', '.join(servers)})")
            need(port == ports[host], f"{pname}: {url}, but {host} listens for gRPC on {ports[host]}")
            need(url in dns or replicas(services[host]) == 1,
                 f"{pname}: {host} has {replicas(services[host])} replicas, but a static entry reaches one")
            seen.add(host)
        need(seen == set(servers), f"{pname} lists {sorted(seen)}, but the server services are {sorted(servers)}")
    total = sum(replicas(services[n]) for n in servers)
    return f"{len(proxies)} proxies x {total} servers ({', '.join(servers)})"


def c_compose_order() -> str:
    services = compose()["services"]
    oneshots = {n for n, s, p, sub in compose_programs() if p == SERVER and sub and sub[0] == "db"}
    for name, svc in compose_serving(SERVER).items():
        env = compose_env(svc)
        dep = svc.get("depends_on") or {}
        need(isinstance(dep, dict), f"{name}: depends_on must give conditions")
        if env.get("CONFLIST_MIGRATE") == "true" or env.get("CONFLIST_DEMO_DATA") == "true":
            continue
        ok = [d for d in oneshots if (dep.get(d) or {}).get("condition") == "service_completed_successfully"]
        need(ok, f"{name} does not wait for a `conflist-server db ...` service to complete")
        need(services[ok[0]].get("restart", "no") == "no", f"{ok[0]} restarts: a one-shot must not")
    for name in oneshots:
        env = compose_env(services[name])
        need("@postgres:" in env.get("DATABASE_URL", ""), f"{name}'s DATABASE_URL does not point at the postgres service")
    return f"schema by {', '.join(sorted(oneshots)) or 'the servers'}"


def haproxy_sections(p: Path) -> list[tuple[str, str, list[str]]]:
    """(section, name, lines) of an HAProxy configuration file, comments dropped."""
    out: list[tuple[str, str, list[str]]] = []
    for raw in p.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            kind, _, name = line.strip().partition(" ")
            out.append((kind, name.strip(), []))
        elif out:
            out[-1][2].append(line.strip())
    return out


def haproxy_seconds(text: str, what: str) -> float:
    return int(text) / 1000 if text.isdigit() else seconds(text, what)  # unitless means ms


def lb_services() -> dict[str, tuple[dict, list[Path]]]:
    out = {}
    for name, svc in compose()["services"].items():
        if str(svc.get("image", "")).startswith("haproxy"):
            files = []
            for v in svc.get("volumes") or []:
                src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
                if src.endswith(".cfg"):
                    files.append((DEPLOY / src).resolve())
            out[name] = (svc, files)
    return out


def c_compose_lb() -> str:
    lbs = lb_services()
    need(lbs, "no haproxy service in front of the proxies")
    proxies = compose_serving(PROXY)
    penv = {n: compose_env(s) for n, s in proxies.items()}
    ws = {n: int(e["CONFLIST_WS_LISTEN"].rsplit(":", 1)[1]) for n, e in penv.items()}
    admin = {n: int(e["CONFLIST_ADMIN_LISTEN"].rsplit(":", 1)[1]) for n, e in penv.items()}
    ping = max(keepalive(e) for e in penv.values())
    out = []
    for lname, (svc, files) in lbs.items():
        need(files, f"{lname} mounts no .cfg file")
        sections = [s for f in files for s in haproxy_sections(f)]
        defaults = [l for k, _, ls in sections if k == "defaults" for l in ls]
        backends = {n: ls for k, n, ls in sections if k == "backend"}
        frontends = [(n, ls) for k, n, ls in sections if k == "frontend"]
        used = {l.split()[1] for _, ls in frontends for l in ls if l.startswith(("default_backend", "use_backend"))}
        need(used, f"{lname}: no frontend sends to a backend")
        for _, ls in frontends:
            if any(l.startswith("default_backend") for l in ls):
                need("option forwardfor" in ls + defaults, f"{lname}: a frontend to the proxies lacks `option forwardfor`")
        for b in used:
            ls = backends.get(b)
            need(ls is not None, f"{lname}: backend {b} is not defined")
            bal = [l.split()[1] for l in ls + defaults if l.startswith("balance ")]
            need(bal and bal[0] in ("leastconn", "source"), f"{lname} {b}: balance {bal[:1]}, want leastconn or source")
            need(any("/readyz" in l for l in ls if l.startswith(("option httpchk", "http-check send"))),
                 f"{lname} {b}: the health check does not GET /readyz")
            dflt = " ".join(l for l in ls if l.startswith("default-server"))
            hosts = {}
            for l in (l for l in ls if l.startswith("server ")):
                words = l.split()
                host, _, port = words[2].rpartition(":")
                opts = dflt + " " + " ".join(words[3:])
                need(re.search(r"\bcheck\b", opts), f"{lname}: server {words[1]} is not health-checked")
                cport = re.search(r"\bport (\d+)", opts)
                need(host in proxies, f"{lname}: server {words[2]} is not a proxy service ({', '.join(proxies)})")
                need(port and int(port) == ws[host], f"{lname}: {words[2]}, but {host} serves WebSocket on {ws[host]}")
                need(cport and int(cport.group(1)) == admin[host],
                     f"{lname}: {host} is checked on port {cport.group(1) if cport else port}, its admin port is {admin[host]}")
                hosts[host] = True
            need(set(hosts) == set(proxies), f"{lname} {b} has {sorted(hosts)}, the proxy services are {sorted(proxies)}")
        tunnel = [l.split()[2] for l in defaults + [l for ls in backends.values() for l in ls] if l.startswith("timeout tunnel")]
        need(tunnel, f"{lname}: no `timeout tunnel` (idle WebSockets would be cut after `timeout client`)")
        t = haproxy_seconds(tunnel[0], "timeout tunnel")
        need(t >= 2 * ping, f"{lname}: timeout tunnel {tunnel[0]} is below twice the proxies' {ping:g}s keepalive")
        ip = ((svc.get("networks") or {}).get("default") or {}).get("ipv4_address")
        need(ip, f"{lname} has no fixed address for the proxies to trust")
        for n, e in penv.items():
            nets = [ipaddress.ip_network(c.strip(), strict=False) for c in e.get("CONFLIST_TRUSTED_PROXIES", "").split(",") if c.strip()]
            need(any(ipaddress.ip_address(ip) in net for net in nets), f"{n}: CONFLIST_TRUSTED_PROXIES does not cover {lname} ({ip})")
        out.append(f"{lname}: {', '.join(f.name for f in files)}")
    return "; ".join(out)


def c_haproxy_syntax() -> str:
    haproxy = shutil.which("haproxy")
    if not haproxy:
        raise Skip("haproxy not installed")
    done = []
    for lname, (_, files) in lb_services().items():
        with tempfile.TemporaryDirectory() as tmp:
            args = []
            for f in files:
                text = f.read_text()
                crts = re.findall(r"\bcrt (\S+)", text)
                if crts:
                    if not shutil.which("openssl"):
                        raise Skip(f"openssl not installed, cannot make a certificate for {f.name}")
                    key, crt, pem = (Path(tmp) / n for n in ("tls.key", "tls.crt", "tls.pem"))
                    r = run(OPENSSL_SELF_SIGNED + ["-keyout", str(key), "-out", str(crt)])
                    need(r.returncode == 0, f"openssl: {tail(r.stderr, 2)}")
                    pem.write_text(crt.read_text() + key.read_text())
                    for c in crts:
                        text = text.replace(f"crt {c}", f"crt {pem}")
                copy = Path(tmp) / f.name
                copy.write_text(text)
                args += ["-f", str(copy)]
            r = run([haproxy, "-c", *args])
            need(r.returncode == 0, tail(r.stdout + r.stderr))
        done.append(lname)
    return f"haproxy -c: {', '.join(done)}"


def c_compose_stop_grace() -> str:
    out = []
    for name, svc, prog, sub in compose_programs():
        if sub:
            continue
        want, how = shutdown_need(prog, compose_env(svc), f"compose {name}")
        have = seconds(str(svc.get("stop_grace_period", "10s")), f"{name} stop_grace_period")
        need(have >= want + MARGIN, f"{name}: stop_grace_period {have:g}s, want >= {how} + {MARGIN}s margin")
        out.append(f"{name} {have:g}s")
    return ", ".join(out)


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


# ---------------------------------------------------------------- Kubernetes

def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@functools.cache
def k8s_docs() -> tuple[dict, ...]:
    docs = []
    for p in k8s_files():
        docs += load_all(p)
    return tuple(docs)


def workloads(kinds=("Deployment", "StatefulSet", "Job")) -> Iterator[dict]:
    return (d for d in k8s_docs() if d.get("kind") in kinds)


def pod_spec(w: dict) -> dict:
    return w["spec"]["template"]["spec"]


def pod_labels(w: dict) -> dict:
    return w["spec"]["template"]["metadata"].get("labels", {})


def selects(selector: dict | None, labels: dict) -> bool:
    ml = (selector or {}).get("matchLabels") or {}
    return bool(ml) and ml.items() <= labels.items()


def kn(d: dict) -> str:
    return f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"


def cmd_of(c: dict) -> list[str]:
    return (c.get("command") or []) + (c.get("args") or [])


def serving(program: str) -> list[tuple[dict, dict]]:
    """(workload, container) of the Deployments/StatefulSets that serve with `program`."""
    return [(w, c) for w in workloads(("Deployment", "StatefulSet")) for c in pod_spec(w)["containers"]
            if cmd_of(c)[:1] == [program] and not subcommand(cmd_of(c))[1]]


def configmaps() -> dict[str, dict]:
    return {d["metadata"]["name"]: d.get("data") or {} for d in k8s_docs() if d.get("kind") == "ConfigMap"}


def example_secrets() -> dict[str, dict]:
    p = K8S / "secret.example.yaml"
    docs = load_all(p) if p.exists() else []
    return {d["metadata"]["name"]: (d.get("stringData") or d.get("data") or {}) for d in docs if d.get("kind") == "Secret"}


def resolved_env(w: dict, c: dict) -> dict[str, str]:
    """A container's env with values and ConfigMap keys resolved (Secrets: the name only)."""
    out = {}
    for e in c.get("env", []):
        if "value" in e:
            out[e["name"]] = str(e["value"])
            continue
        src = e.get("valueFrom") or {}
        if "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            data = configmaps().get(ref["name"])
            need(data is not None, f"{kn(w)} {e['name']}: ConfigMap {ref['name']} is not defined")
            if ref["key"] in data:
                out[e["name"]] = str(data[ref["key"]])
            else:
                need(ref.get("optional"), f"{kn(w)} {e['name']}: ConfigMap {ref['name']} has no key {ref['key']}")
        elif "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            keys = example_secrets().get(ref["name"])
            need(keys is not None, f"{kn(w)} {e['name']}: Secret {ref['name']} is not in secret.example.yaml")
            need(ref["key"] in keys, f"{kn(w)} {e['name']}: secret.example.yaml has no {ref['name']} key {ref['key']}")
        else:
            out[e["name"]] = ""
    for ef in c.get("envFrom", []):
        ref = ef.get("configMapRef")
        if ref:
            data = configmaps().get(ref["name"])
            need(data is not None or ref.get("optional"), f"{kn(w)}: ConfigMap {ref['name']} is not defined")
            out.update({ef.get("prefix", "") + k: str(v) for k, v in (data or {}).items()})
    return out


def one(kind: str, name: str) -> dict:
    found = [d for d in k8s_docs() if d.get("kind") == kind and d["metadata"]["name"] == name]
    need(len(found) == 1, f"want exactly one {kind}/{name}, found {len(found)}")
    return found[0]


def c_k8s_schema(p: Path) -> Callable[[], str]:
    def fn() -> str:
        args = [str(TOOLS / "kubernetes-validate"), "--strict", "--quiet"]
        for v in K8S_VERSIONS:
            args += ["-k", v]
        r = run(args + [str(p)])
        need(r.returncode == 0 and "ERROR" not in r.stdout + r.stderr, tail(r.stdout + r.stderr))
        return "kubernetes-validate --strict, " + ", ".join(K8S_VERSIONS)
    return fn


def kustomization(d: Path) -> list[str]:
    docs = load_all(d / "kustomization.yaml")
    need(len(docs) == 1 and docs[0].get("kind") == "Kustomization", f"{rel(d)}/kustomization.yaml is not one Kustomization")
    res = docs[0].get("resources") or []
    for r in res:
        need((d / r).is_file(), f"{rel(d)}: resource {r} does not exist")
    return res


def c_kustomizations() -> str:
    res = kustomization(K8S)
    need("secret.example.yaml" not in res, "secret.example.yaml is listed: apply -k would overwrite the real Secrets")
    top = [p.name for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml", "secret.example.yaml")]
    missing = [n for n in top if n not in res]
    need(not missing, f"not listed: {', '.join(missing)}")
    need(not any(r.startswith("migrate") for r in res), "the optional migrate Job is in the default kustomization")
    jobs = [kn(d) for p in res for d in load_all(K8S / p) if d.get("kind") == "Job"]
    need(not jobs, f"the default kustomization runs {', '.join(jobs)}: the schema Job must stay optional")
    mig = K8S / "migrate"
    need((mig / "kustomization.yaml").is_file(), "no optional k8s/migrate/kustomization.yaml")
    mres = kustomization(mig)
    mjobs = [d for p in mres for d in load_all(mig / p) if d.get("kind") == "Job"]
    need(len(mjobs) == 1, f"k8s/migrate has {len(mjobs)} Jobs, want one")
    cmd = cmd_of(pod_spec(mjobs[0])["containers"][0])
    need(cmd[:2] == [SERVER, "db"], f"the migrate Job runs {cmd}, not a `{SERVER} db` command")
    return f"{len(res)} resources; optional k8s/migrate runs {' '.join(cmd)}"


def c_kustomize_build() -> str:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise Skip("kubectl not installed")
    out = []
    for d in (K8S, K8S / "migrate"):
        r = run([kubectl, "kustomize", str(d)])
        need(r.returncode == 0, f"{rel(d)}: {tail(r.stderr or r.stdout)}")
        kinds = sorted(x.get("kind") for x in yaml.safe_load_all(r.stdout) if x)
        need("Secret" not in kinds, f"{rel(d)} renders a Secret")
        need(d != K8S or "Job" not in kinds, f"{rel(d)} renders a Job: the schema Job must stay optional")
        out.append(f"{d.name}: {', '.join(kinds)}")
    return "kubectl kustomize: " + "; ".join(out)


def c_k8s_env() -> str:
    n = 0
    for w in workloads():
        for c in pod_spec(w).get("initContainers", []) + pod_spec(w)["containers"]:
            prog, sub = subcommand(cmd_of(c))
            env = resolved_env(w, c)
            check_env_names(kn(w), prog, sub, [e["name"] for e in c.get("env", [])] + list(env))
            if prog == SERVER:
                db = [e for e in c.get("env", []) if e["name"] == "DATABASE_URL"]
                ref = ((db[0].get("valueFrom") or {}).get("secretKeyRef") or {}) if db else {}
                need(ref.get("name") == "conflist-db" and ref.get("key") == "database-url",
                     f"{kn(w)}: DATABASE_URL is not from Secret conflist-db key database-url")
            if not sub:
                check_listen(kn(w), prog, env, {p["containerPort"] for p in c.get("ports", [])})
                if prog == PROXY:
                    check_max_connections(kn(w), env)
            n += 1
    need(n, "no workloads")
    return f"{n} containers"


def c_k8s_discovery() -> str:
    servers, proxies = serving(SERVER), serving(PROXY)
    need(len(servers) == 1 and len(proxies) >= 1, f"{len(servers)} server and {len(proxies)} proxy workloads")
    sw, sc = servers[0]
    n = sw["spec"].get("replicas", 1)
    need(n >= 2, f"{kn(sw)} has {n} replica(s): failover needs two")
    grpc = {p.get("name"): p["containerPort"] for p in sc.get("ports", [])}
    domain = resolved_env(sw, sc).get("CONFLIST_SIP_DOMAIN")
    for pw, pc in proxies:
        env = resolved_env(pw, pc)
        need("CONFLIST_SERVERS" not in env, f"{kn(pw)}: a static CONFLIST_SERVERS list goes stale as {kn(sw)} scales")
        need("CONFLIST_SERVERS_DNS" in env, f"{kn(pw)}: no CONFLIST_SERVERS_DNS")
        host, port = endpoint(env["CONFLIST_SERVERS_DNS"], kn(pw))
        svc = one("Service", host.split(".")[0])
        need(svc["spec"].get("clusterIP") == "None", f"{kn(svc)} is not headless: its name would resolve to one address")
        need(svc["spec"].get("publishNotReadyAddresses") is True,
             f"{kn(svc)}: without publishNotReadyAddresses, a database outage (every server unready) empties the server set")
        need(selects({"matchLabels": svc["spec"].get("selector")}, pod_labels(sw)), f"{kn(svc)} does not select {kn(sw)}'s pods")
        sp = [p for p in svc["spec"]["ports"] if p["port"] == port]
        need(sp, f"{kn(svc)} has no port {port}")
        target = sp[0].get("targetPort", port)
        need(grpc.get(target, target) == int(setting(SERVER, resolved_env(sw, sc), "CONFLIST_GRPC_LISTEN").rsplit(":", 1)[1]),
             f"{kn(svc)} port {port} does not reach the servers' gRPC port")
        # With DNS and the server's own pod IPs, the proxy connects to the targetPort directly.
        need(port == grpc.get(target, target), f"{kn(pw)} dials port {port}, the pods listen on {grpc.get(target, target)}")
        need(env.get("CONFLIST_WEB_SIP_DOMAIN", domain) == domain,
             f"{kn(pw)}: CONFLIST_WEB_SIP_DOMAIN {env.get('CONFLIST_WEB_SIP_DOMAIN')!r} is not the servers' {domain!r}")
    return f"{len(proxies)} proxy workload(s) -> {kn(sw)} x{n} via DNS"


def prestop_seconds(c: dict) -> float:
    pre = (c.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    cmd = (pre.get("exec") or {}).get("command") or []
    m = re.search(r"\bsleep (\S+)", " ".join(cmd))
    return seconds(m.group(1), "preStop sleep") if m else 0.0


def c_k8s_grace() -> str:
    out = []
    for prog in PROGRAMS:
        for w, c in serving(prog):
            env = resolved_env(w, c)
            pre = prestop_seconds(c)
            if prog == PROXY:
                need(pre > 0, f"{kn(w)}: no preStop sleep (the ingress would still send new connections after SIGTERM)")
            want, how = shutdown_need(prog, env, kn(w))
            tgps = pod_spec(w).get("terminationGracePeriodSeconds", 30)
            need(tgps >= pre + want + MARGIN,
                 f"{kn(w)}: terminationGracePeriodSeconds {tgps}, want >= preStop {pre:g}s + {how} + {MARGIN}s margin")
            out.append(f"{kn(w)} {tgps}s >= {pre:g}+{want:g}+{MARGIN}")
    for sw, _ in serving(SERVER):
        mrs = sw["spec"].get("minReadySeconds", 0)
        for pw, pc in serving(PROXY):
            env = resolved_env(pw, pc)
            if "CONFLIST_SERVERS_DNS" in env:
                iv = seconds(setting(PROXY, env, "CONFLIST_DISCOVERY_INTERVAL"), "CONFLIST_DISCOVERY_INTERVAL")
                need(mrs >= iv, f"{kn(sw)}: minReadySeconds {mrs} is below {kn(pw)}'s discovery interval {iv:g}s "
                                "(an old server may drain before the proxies know the new one)")
    need(out, "no serving workloads")
    return "; ".join(out)


def c_k8s_pdb() -> str:
    pdbs = [d for d in k8s_docs() if d.get("kind") == "PodDisruptionBudget"]
    out = []
    for prog in PROGRAMS:
        for w, _ in serving(prog):
            mine = [p for p in pdbs if selects(p["spec"].get("selector"), pod_labels(w))]
            need(len(mine) == 1, f"{kn(w)}: {len(mine)} PodDisruptionBudgets select its pods, want one")
            n, spec = w["spec"].get("replicas", 1), mine[0]["spec"]

            def count(v: int | str, up: bool) -> int:
                if isinstance(v, str) and v.endswith("%"):
                    x = n * int(v[:-1]) / 100
                    return math.ceil(x) if up else math.floor(x)
                return int(v)
            if "minAvailable" in spec:
                allowed = n - count(spec["minAvailable"], True)
            else:
                allowed = count(spec.get("maxUnavailable", 1), True)
            need(allowed >= 1, f"{kn(mine[0])} allows no disruption at {n} replicas: node drains would hang")
            need(n - allowed >= 1, f"{kn(mine[0])} lets all {n} replicas go at once")
            out.append(f"{kn(w)} {allowed} of {n}")
    return ", ".join(out)


def c_k8s_spread() -> str:
    out = []
    for prog in PROGRAMS:
        for w, _ in serving(prog):
            tsc = pod_spec(w).get("topologySpreadConstraints") or []
            keys = [t["topologyKey"] for t in tsc if selects(t.get("labelSelector"), pod_labels(w))]
            need("kubernetes.io/hostname" in keys, f"{kn(w)}: no topology spread over kubernetes.io/hostname for its own pods")
            out.append(f"{kn(w)}: {', '.join(keys)}")
    return "; ".join(out)


def c_k8s_networkpolicy() -> str:
    (sw, sc), = serving(SERVER)
    (pw, _), *_ = serving(PROXY)
    grpc = [(p.get("name"), p["containerPort"]) for p in sc["ports"] if p.get("name") == "grpc"]
    need(grpc, f"{kn(sw)} has no port named grpc")
    names = set(grpc[0])
    pols = [d for d in k8s_docs() if d.get("kind") == "NetworkPolicy" and selects(d["spec"].get("podSelector"), pod_labels(sw))]
    need(pols, f"no NetworkPolicy selects {kn(sw)}'s pods")
    others = [w for w in workloads() if w is not pw]
    allowed = False
    for pol in pols:
        need("Ingress" in pol["spec"].get("policyTypes", ["Ingress"]), f"{kn(pol)} does not restrict Ingress")
        for rule in pol["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(p.get("port") in names for p in ports):
                continue  # a rule for other ports
            peers = rule.get("from")
            need(peers, f"{kn(pol)}: a rule opens the gRPC port to everyone")
            for peer in peers:
                need(set(peer) == {"podSelector"}, f"{kn(pol)}: gRPC open to {sorted(set(peer) - {'podSelector'})}")
                sel = peer["podSelector"]
                need(selects(sel, pod_labels(pw)), f"{kn(pol)}: a gRPC peer is not the proxy pods")
                wrong = [kn(o) for o in others if selects(sel, pod_labels(o))]
                need(not wrong, f"{kn(pol)}: the gRPC peer selector also matches {', '.join(wrong)}")
            allowed = True
    need(allowed, f"no NetworkPolicy rule lets {kn(pw)} reach the gRPC port")
    return f"gRPC {grpc[0][1]} of {kn(sw)} from {kn(pw)} only"


def c_k8s_ingress() -> str:
    ings = [d for d in k8s_docs() if d.get("kind") == "Ingress"]
    need(ings, "no Ingress")
    out = []
    for ing in ings:
        ann = ing["metadata"].get("annotations") or {}
        backends = [p["backend"]["service"] for r in ing["spec"].get("rules", []) for p in r["http"]["paths"]]
        need(backends, f"{kn(ing)} has no service backends")
        for b in backends:
            svc = one("Service", b["name"])
            port = [p for p in svc["spec"]["ports"] if p.get("name") == b["port"].get("name") or p["port"] == b["port"].get("number")]
            need(port, f"{kn(ing)}: {kn(svc)} has no port {b['port']}")
            targets = [(w, c) for w, c in serving(PROXY) if selects({"matchLabels": svc["spec"].get("selector")}, pod_labels(w))]
            need(targets, f"{kn(ing)}: {kn(svc)} does not select the proxies")
            for w, c in targets:
                wsport = int(resolved_env(w, c)["CONFLIST_WS_LISTEN"].rsplit(":", 1)[1])
                cports = {p.get("name"): p["containerPort"] for p in c["ports"]}
                t = port[0].get("targetPort", port[0]["port"])
                need(cports.get(t, t) == wsport, f"{kn(ing)} reaches port {cports.get(t, t)} of {kn(w)}, not its WebSocket port {wsport}")
                ping = keepalive(resolved_env(w, c))
                for a in ("proxy-read-timeout", "proxy-send-timeout"):
                    v = ann.get(f"nginx.ingress.kubernetes.io/{a}")
                    need(v, f"{kn(ing)}: no nginx.ingress.kubernetes.io/{a} (idle WebSockets cut after 60s)")
                    need(seconds(v, a) >= 2 * ping, f"{kn(ing)}: {a} {v} is below twice the proxies' {ping:g}s keepalive")
        out.append(f"{kn(ing)} -> {', '.join(b['name'] for b in backends)}")
    return "; ".join(out)


def c_k8s_probes() -> str:
    n = 0
    for w in workloads(("Deployment", "StatefulSet")):
        for c in pod_spec(w)["containers"]:
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
                get = (c.get(probe) or {}).get("httpGet") or {}
                need(get.get("path") == path, f"{kn(w)} {probe} path is {get.get('path')!r}, want {path}")
                need(get.get("port") in ports, f"{kn(w)} {probe} port {get.get('port')!r} is not a container port")
            n += 1
    need(n, "no Deployment or StatefulSet found")
    return f"{n} containers"


def c_k8s_services() -> str:
    out = []
    for svc in (d for d in k8s_docs() if d.get("kind") == "Service"):
        sel = svc["spec"].get("selector") or {}
        targets = [w for w in workloads(("Deployment", "StatefulSet")) if selects({"matchLabels": sel}, pod_labels(w))]
        need(targets, f"{kn(svc)} selects no workload")
        for w in targets:
            need(selects(w["spec"]["selector"], pod_labels(w)), f"{kn(w)} selector does not match its pods")
            cports = {p.get("name") for c in pod_spec(w)["containers"] for p in c.get("ports", [])} | \
                     {p["containerPort"] for c in pod_spec(w)["containers"] for p in c.get("ports", [])}
            for p in svc["spec"]["ports"]:
                need(p.get("targetPort", p["port"]) in cports, f"{kn(svc)} port {p['port']} targets no port of {kn(w)}")
        out.append(f"{svc['metadata']['name']}->{','.join(kn(w) for w in targets)}")
    need(out, "no Services")
    return "; ".join(out)


def c_readme() -> None:
    text = (DEPLOY / "README.md").read_text()
    for want in ("docker build -f deploy/Dockerfile", "docker-compose.yml", "kubectl apply -k deploy/k8s",
                 "kubectl apply -k deploy/k8s/migrate", "db install --watch", "haproxy.cfg", "preStop",
                 "openssl req -x509", "20 000", "rendezvous"):
        need(want in text, f"README.md does not mention {want!r}")


def main() -> int:
    if not (DEPLOY.is_dir() and K8S.is_dir()):
        print(f"deploy-check: {DEPLOY} has no k8s/ folder")
        return 2
    print(f"deploy-check: {rel(DEPLOY)} (env names from {rel(BIN_DIR)}/*/--help)", flush=True)
    check("Dockerfile: hadolint", c_hadolint)
    check("Dockerfile: stripped release build of both binaries, non-root uid = k8s runAsUser", c_dockerfile)
    check("Dockerfile.dockerignore: excludes target/ and .git", c_dockerignore)
    check("deploy/: no private key committed, tls/ git-ignored", c_no_private_keys)
    check("compose: compose-spec schema", c_compose_schema)
    check("compose: real subcommands, env names in the binaries' --help, 0.0.0.0 listeners, open files", c_compose_env)
    check("compose: every proxy lists exactly the server services (and replicas)", c_compose_servers)
    check("compose: the schema is loaded once, before the servers start", c_compose_order)
    check("compose: load balancer -> every proxy, /readyz checks, tunnel timeout, trusted address", c_compose_lb)
    check("compose: haproxy configuration syntax", c_haproxy_syntax)
    check("compose: stop_grace_period >= drain + shutdown grace", c_compose_stop_grace)
    check("compose: ports published on 127.0.0.1 only", c_compose_ports)
    for p in k8s_files():
        check(f"k8s schema: {p.relative_to(K8S)}", c_k8s_schema(p))
    check("k8s: kustomizations (default without Secrets or the optional migrate Job)", c_kustomizations)
    check("k8s: kustomizations render", c_kustomize_build)
    check("k8s: real subcommands, env names in the binaries' --help, ConfigMap/Secret keys, listeners", c_k8s_env)
    check("k8s: proxies discover the servers through the headless Service (DNS)", c_k8s_discovery)
    check("k8s: terminationGracePeriodSeconds >= preStop + drain + shutdown grace", c_k8s_grace)
    check("k8s: a PodDisruptionBudget per workload that allows one disruption", c_k8s_pdb)
    check("k8s: topology spread over nodes for each workload's own pods", c_k8s_spread)
    check("k8s: NetworkPolicy lets only the proxies reach the servers' gRPC port", c_k8s_networkpolicy)
    check("k8s: Ingress -> proxies' WebSocket port, timeouts above the keepalive", c_k8s_ingress)
    check("k8s: readiness /readyz and liveness /livez on every Deployment/StatefulSet", c_k8s_probes)
    check("k8s: Services select pods and target declared ports", c_k8s_services)
    check("README.md: build, compose, TLS, kubectl, migrate, preStop, scaling notes", c_readme)
    summary = f"deploy-check: {passed} passed, {failed} failed"
    print(summary + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
