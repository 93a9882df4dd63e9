"""The benchmark: the authority against the framework ceiling and a real peer, in one run, on this machine.

Starts a private Redis-compatible server, then for each ASGI server and worker count: (a) a bare Litestar JSON
endpoint (the ceiling), (b) mint, (c) exchange with a fresh pre-minted token per request, (d) JWKS, (e) repeated
introspection of one live session's access token (what a resource server does on every request of an impersonated
session), each driven by wrk at a fixed concurrency; then node oidc-provider's client-credentials grant (EdDSA
JWTs) as the peer, with one process and with as many as our chosen workers (node's cluster module). The authority
runs with production settings (encrypted keys, a trusted issuer with a JWKS file, rate limits on, audit on),
started as ``authority.asgi:app`` exactly as the container starts it. Prints a table and writes
``bench/results/results.json`` and ``bench/results/chart.png``.

``--waterfall`` runs the waterfall instead (``bench/waterfall.py``: each layer of mint, exchange and introspection
as an app of its own, adding one real component at a time) and writes ``bench/results/waterfall.md`` and ``.json``.

    python -m bench.run                  # the full run (about 15 minutes with the 10-minute soak)
    python -m bench.run --soak 30        # a shorter soak
    python -m bench.run --waterfall --repeat 3 --duration 4   # the waterfall, medians of three passes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil

from authority import demo
from authority.authn import Caller
from authority.directory_file import DEMO_DIRECTORY
from authority.embedded import EmbeddedRedis, free_port
from authority.services import build
from authority.settings import load

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "lua"
RESULTS = ROOT / "bench" / "results"
PEER = ROOT / "bench" / "peer"
PY = sys.executable
WARMUP_S = 3  # unmeasured load before each server's first measured run (JITs, pools, caches)


def wrk(url: str, script: str, args: list[str], seconds: int, *, connections: int, threads: int) -> dict[str, Any]:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA / script),
        url,
        "--",
        *args,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, "BENCH_LUA": str(LUA)})
    line = next(line for line in out.stdout.splitlines() if line.startswith("WRK_JSON "))
    figures: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
    return figures


def tree_rss(pid: int) -> int:
    """Resident memory of a server: the process and its workers."""
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"{process.args!r} exited; see {log}"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer; see {log}"
        time.sleep(0.2)


def write_tokens(work: Path, tokens: list[str], threads: int) -> None:
    """One file of tokens per wrk thread (exchange.lua reads ``tokens_<n>.txt``): no token is sent twice."""
    for t in range(threads):
        (work / f"tokens_{t + 1}.txt").write_text("\n".join(tokens[t::threads]) + "\n")


@contextmanager
def server(kind: str, app: str, port: int, *, workers: int, env: dict[str, str], log: Path) -> Iterator[int]:
    common = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--loop", "uvloop"]
    if kind == "uvicorn":
        flags = ["--http", "httptools", "--no-access-log", "--log-level", "warning"]
        command = [PY, "-m", "uvicorn", app, *common, *flags]
    else:
        command = [PY, "-m", "granian", "--interface", "asgi", *common, "--no-ws", "--log-level", "warning", app]
    with log.open("ab") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=sink)
    try:
        wait_ready(f"http://127.0.0.1:{port}{'/bare' if app.startswith('bench.bare') else '/readyz'}", process, log)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def premint(env: dict[str, str], count: int) -> list[str]:
    """Fresh tokens minted by the authority's own service code (sign + allowlist write), as the mint endpoint
    would, so the exchange run spends one never-used token per request."""
    settings = msgspec.structs.replace(load(env), mint_rate_per_actor=10**9, mint_rate_per_location=10**9)
    services = build(settings, log=None)
    await services.keys.refresh()
    caller = Caller(demo.DEMO_ISSUER, "7", "operator", "1", None, impersonated=False, expires_at=2**31)
    tokens: list[str] = []
    while len(tokens) < count:
        tokens += await asyncio.gather(*(services.authority.mint_for_staff(caller, 42) for _ in range(min(64, count))))
    await services.close()
    return tokens[:count]


def production_env(work: Path, redis_url: str, port: int) -> dict[str, str]:
    issuer = demo.trusted_demo_issuer(work / "portal")  # an ordinary trusted issuer with a JWKS file
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")}
    return {
        **base,
        "AUTHORITY_ISSUER": f"http://127.0.0.1:{port}",
        "AUTHORITY_REDIS_URL": redis_url,
        "AUTHORITY_REDIS_PREFIX": f"bench{port}:",
        "AUTHORITY_KEYS_DIR": str(work / "keys"),
        "AUTHORITY_KEY_PASSPHRASE": "bench passphrase",
        "AUTHORITY_DIRECTORY_FILE": str(DEMO_DIRECTORY),
        "AUTHORITY_TRUSTED_ISSUERS": msgspec.json.encode([issuer]).decode(),
        "AUTHORITY_IMPERSONATION_TTL_S": "600",  # pre-minted tokens must outlive the exchange run
        "AUTHORITY_MINT_RATE_PER_ACTOR": str(10**9),  # one caller drives all load: the limiter runs, never refuses
        "AUTHORITY_MINT_RATE_PER_LOCATION": str(10**9),
    }


def crypto_floor(rounds: int = 2000) -> dict[str, float]:
    """Microseconds per Ed25519 signature and verification on this machine: what no Python code can remove from
    a mint (one signature) or an exchange (one verification, one signature)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415

    key = ed25519.Ed25519PrivateKey.generate()
    public, message = key.public_key(), b"x" * 400
    signature = key.sign(message)
    start = time.perf_counter()
    for _ in range(rounds):
        key.sign(message)
    signed = time.perf_counter()
    for _ in range(rounds):
        public.verify(signature, message)
    verified = time.perf_counter()
    return {
        "ed25519_sign_us": round((signed - start) / rounds * 1e6, 1),
        "ed25519_verify_us": round((verified - signed) / rounds * 1e6, 1),
    }


def introspection_args(env: dict[str, str], caller: str) -> list[str]:
    """post.lua's arguments for a resource server introspecting one live session's access token, again and again."""
    access, _ = asyncio.run(session_tokens(env))
    return [f"token={access}", "application/x-www-form-urlencoded", caller]


SCENARIOS = ("bare", "mint", "exchange", "jwks", "introspection")


def half_rate_delay_ms(peak_rps: float, connections: int) -> str:
    """Per-connection pause so that ``connections`` offer about half the peak rate."""
    return str(max(1, round(connections / (peak_rps / 2) * 1000)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="authority-bench-"))
    log = work / "servers.log"
    results: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "floor": crypto_floor(),
        "runs": [],
    }
    seconds, conns, threads = args.duration, args.connections, args.threads
    with EmbeddedRedis(work / "redis", persist=False) as redis_server:
        for kind in args.servers:
            for workers in args.workers:
                port = free_port()
                env = production_env(work, redis_server.url, port)
                caller = demo.dev_token(work / "portal", role="operator", sub="7", location="1", ttl=86400)
                base = f"http://127.0.0.1:{port}"
                figures: dict[str, Any] = {"server": kind, "workers": workers}
                with server(kind, "bench.bare:app", port, workers=workers, env=env, log=log):
                    wrk(f"{base}/bare", "get.lua", ["-"], WARMUP_S, connections=conns, threads=threads)
                    figures["bare"] = wrk(f"{base}/bare", "get.lua", ["-"], seconds, connections=conns, threads=threads)
                with server(kind, "authority.asgi:app", port, workers=workers, env=env, log=log):
                    mint_url = f"{base}/api/sys/users/impersonate?coworkerId=42"
                    wrk(mint_url, "get.lua", [caller], WARMUP_S, connections=conns, threads=threads)
                    figures["mint"] = wrk(mint_url, "get.lua", [caller], seconds, connections=conns, threads=threads)
                    figures["jwks"] = wrk(
                        f"{base}/.well-known/jwks.json", "get.lua", ["-"], seconds, connections=conns, threads=threads
                    )
                    need = int(figures["mint"]["rps"] * seconds * 2) + 2000
                    tokens = asyncio.run(premint(env, need))
                    write_tokens(work, tokens, threads)
                    figures["exchange"] = wrk(
                        f"{base}/api/sys/users/exchange",
                        "exchange.lua",
                        [str(work / "tokens_")],
                        seconds,
                        connections=conns,
                        threads=threads,
                    )
                    figures["introspection"] = wrk(
                        f"{base}/oauth2/introspect",
                        "post.lua",
                        introspection_args(env, caller),
                        seconds,
                        connections=conns,
                        threads=threads,
                    )
                for name in SCENARIOS[1:]:
                    figures[name]["vs_bare"] = round(figures[name]["rps"] / figures["bare"]["rps"], 3)
                print(summary_line(figures), flush=True)
                results["runs"].append(figures)

        best = max(results["runs"], key=lambda r: r["mint"]["rps"] + r["exchange"]["rps"])
        results["chosen"] = {"server": best["server"], "workers": best["workers"]}
        port = free_port()
        env = production_env(work, redis_server.url, port)
        caller = demo.dev_token(work / "portal", role="operator", sub="7", location="1", ttl=86400)
        base = f"http://127.0.0.1:{port}"
        with server(best["server"], "authority.asgi:app", port, workers=best["workers"], env=env, log=log) as pid:
            mint_url = f"{base}/api/sys/users/impersonate?coworkerId=42"
            half = {
                "mint": wrk(
                    mint_url,
                    "get.lua",
                    [caller, half_rate_delay_ms(best["mint"]["rps"], conns)],
                    seconds,
                    connections=conns,
                    threads=threads,
                )
            }
            tokens = asyncio.run(premint(env, int(best["exchange"]["rps"] * seconds) + 2000))
            write_tokens(work, tokens, threads)
            half["exchange"] = wrk(
                f"{base}/api/sys/users/exchange",
                "exchange.lua",
                [str(work / "tokens_"), half_rate_delay_ms(best["exchange"]["rps"], conns)],
                seconds,
                connections=conns,
                threads=threads,
            )
            half["introspection"] = wrk(
                f"{base}/oauth2/introspect",
                "post.lua",
                [*introspection_args(env, caller), half_rate_delay_ms(best["introspection"]["rps"], conns)],
                seconds,
                connections=conns,
                threads=threads,
            )
            results["half_peak"] = half
            rss_start = tree_rss(pid)
            soak = wrk(
                mint_url,
                "get.lua",
                [caller, half_rate_delay_ms(best["mint"]["rps"], conns)],
                args.soak,
                connections=conns,
                threads=threads,
            )
            results["soak"] = {
                "seconds": args.soak,
                "rss_start_mb": round(rss_start / 2**20, 1),
                "rss_end_mb": round(tree_rss(pid) / 2**20, 1),
                "mint": soak,
            }

        # The peer as it starts by default (one process), and with as many processes as our chosen workers
        # (node's cluster module): the fair comparison.
        results["peer"] = run_peer(seconds, conns, threads, log)
        results["peer_cluster"] = {**run_peer(seconds, conns, threads, log, processes=best["workers"])}
        results["peer_cluster"]["processes"] = best["workers"]
        for name in ("mint", "exchange"):
            best[name]["vs_peer"] = round(best[name]["rps"] / results["peer"]["rps"], 2)
            best[name]["vs_peer_cluster"] = round(best[name]["rps"] / results["peer_cluster"]["rps"], 2)
    shutil.rmtree(work, ignore_errors=True)
    return results


def run_peer(seconds: int, conns: int, threads: int, log: Path, *, processes: int = 1) -> dict[str, Any]:
    if not (PEER / "node_modules" / "oidc-provider").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=PEER, check=True)
    port = free_port()
    with log.open("ab") as sink:
        command = ["node", "server.mjs", str(port), str(processes)]
        process = subprocess.Popen(command, cwd=PEER, stdout=sink, stderr=sink)
    try:
        wait_ready(f"http://127.0.0.1:{port}/.well-known/openid-configuration", process, log)
        wrk(f"http://127.0.0.1:{port}/token", "peer.lua", [], WARMUP_S, connections=conns, threads=threads)
        return wrk(f"http://127.0.0.1:{port}/token", "peer.lua", [], seconds, connections=conns, threads=threads)
    finally:
        process.terminate()
        process.wait(timeout=20)


def summary_line(r: dict[str, Any]) -> str:
    return (
        f"{r['server']:8} workers={r['workers']}  bare {r['bare']['rps']:8.0f}/s  "
        f"mint {r['mint']['rps']:7.0f}/s ({r['mint']['vs_bare']:.2f}x)  "
        f"exchange {r['exchange']['rps']:7.0f}/s ({r['exchange']['vs_bare']:.2f}x)  "
        f"jwks {r['jwks']['rps']:7.0f}/s ({r['jwks']['vs_bare']:.2f}x)  "
        f"introspection {r['introspection']['rps']:7.0f}/s ({r['introspection']['vs_bare']:.2f}x)"
    )


def table(results: dict[str, Any]) -> str:
    rows = [
        "| server | workers | scenario | req/s | p50 ms | p99 ms | vs bare | vs peer | non-2xx |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        for name in SCENARIOS:
            f = r[name]
            peers = "/".join(str(f[k]) for k in ("vs_peer", "vs_peer_cluster") if k in f)
            rows.append(
                f"| {r['server']} | {r['workers']} | {name} | {f['rps']:.0f} | {f['p50_ms']:.2f} | "
                f"{f['p99_ms']:.2f} | {f.get('vs_bare', 1):.2f} | {peers} | {f['non_2xx']} |"
            )
    for p in (results["peer"], results["peer_cluster"]):
        rows.append(
            f"| node oidc-provider | {p.get('processes', 1)} | client_credentials | {p['rps']:.0f} | "
            f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | | | {p['non_2xx']} |"
        )
    rows += ["", "vs peer: against oidc-provider with 1 process / with as many processes as our workers"]
    chosen, half, soak = results["chosen"], results["half_peak"], results["soak"]
    rows += ["", f"chosen: {chosen['server']} with {chosen['workers']} worker(s)"]
    if floor := results.get("floor"):
        rows.append(f"crypto floor: Ed25519 sign {floor['ed25519_sign_us']} us, verify {floor['ed25519_verify_us']} us")
    for name in ("mint", "exchange", "introspection"):
        rows.append(
            f"half peak {name}: {half[name]['rps']:.0f}/s, p50 {half[name]['p50_ms']:.2f} ms, "
            f"p99 {half[name]['p99_ms']:.2f} ms"
        )
    rows.append(
        f"soak {soak['seconds']} s of mint at half peak: RSS {soak['rss_start_mb']} MB -> "
        f"{soak['rss_end_mb']} MB, p99 {soak['mint']['p99_ms']:.2f} ms, non-2xx {soak['mint']['non_2xx']}"
    )
    return "\n".join(rows)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    labels, values = [], []
    for r in results["runs"]:
        for name in SCENARIOS:
            labels.append(f"{r['server']}x{r['workers']}\n{name}")
            values.append(r[name]["rps"])
    for p in (results["peer"], results["peer_cluster"]):
        labels.append(f"oidc-provider x{p.get('processes', 1)}\nclient_credentials")
        values.append(p["rps"])
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.9), 5))
    ax.bar(
        range(len(values)),
        values,
        color=["#888" if "bare" in lab else "#c63" if "oidc" in lab else "#369" for lab in labels],
    )
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("requests / s")
    ax.set_title("authority on this machine: throughput per scenario (wrk, same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# The waterfall (bench/waterfall.py): per path, each layer the previous one plus one real component.
WATERFALL: dict[str, list[tuple[str, str]]] = {
    "mint": [
        ("bare", "bare Litestar JSON endpoint"),
        ("get_stack", "+ the service's request pipeline (middleware, hooks)"),
        ("mint_authn", "+ caller authentication (remembered bearer)"),
        ("mint_redis", "+ the Redis round trip (allowlist write, rate counts)"),
        ("mint_sign", "+ claims and signature"),
        ("mint_audit", "+ the audit event (the service's _mint)"),
        ("full", "+ the route: parameters, guards, DI, directory, rules, response struct"),
    ],
    "exchange": [
        ("bare", "bare Litestar JSON endpoint"),
        ("post_stack", "+ the service's request pipeline (a POST)"),
        ("exchange_body", "+ the JSON body (guard, decoding, unique names)"),
        ("exchange_verify", "+ the impersonation token's verification"),
        ("exchange_redis", "+ the consume script and the session trail (one round trip)"),
        ("exchange_sign", "+ access token claims and signature"),
        ("full", "+ the route: DI, DPoP gate, directory again, audit, response struct"),
    ],
    "introspection": [
        ("bare", "bare Litestar JSON endpoint"),
        ("post_stack", "+ the service's request pipeline (a POST)"),
        ("introspect_authn", "+ caller authentication (remembered bearer)"),
        ("introspect_body", "+ the form body"),
        ("introspect_verify", "+ the access token's verification (remembered)"),
        ("introspect_redis", "+ the session's Redis GET"),
        ("full", "+ the route: guards, DI, audit, response struct"),
    ],
}


def server_cpu_s(processes: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def measured(
    pid: int, url: str, script: str, args: list[str], seconds: int, *, conns: int, threads: int
) -> dict[str, Any]:
    """wrk's figures, plus the servers' own CPU time per request (user + system of the server and its workers):
    steadier than throughput when other work shares the machine."""
    process = psutil.Process(pid)
    processes = [process, *process.children(recursive=True)]
    before = server_cpu_s(processes)
    figures = wrk(url, script, args, seconds, connections=conns, threads=threads)
    figures["cpu_us"] = round((server_cpu_s(processes) - before) / max(1, figures["requests"]) * 1e6, 1)
    figures["us"] = round(1e6 / max(figures["rps"], 1e-9), 1)
    return figures


async def session_tokens(env: dict[str, str]) -> tuple[str, str]:
    """An access token of a live session (exchanged in-process, as the route would) and an unspent impersonation
    token, for the layers that re-send one token."""
    settings = msgspec.structs.replace(load(env), mint_rate_per_actor=10**9, mint_rate_per_location=10**9)
    services = build(settings, log=None)
    await services.keys.refresh()
    caller = Caller(demo.DEMO_ISSUER, "7", "operator", "1", None, impersonated=False, expires_at=2**31)
    spent, kept = [await services.authority.mint_for_staff(caller, 42) for _ in range(2)]
    grant = await services.authority.exchange(spent)
    await services.close()
    return grant.access_token, kept


def run_waterfall(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="authority-waterfall-"))
    runs: list[dict[str, dict[str, Any]]] = []
    with EmbeddedRedis(work / "redis", persist=False) as redis_server:
        for repeat in range(args.repeat):
            runs.append(waterfall_once(args, work, redis_server.url))
            print(f"waterfall run {repeat + 1}/{args.repeat}:\n{waterfall_table(runs[-1:])}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "server": "granian x 2",
        "seconds": args.duration,
        "connections": args.connections,
        "runs": runs,
    }


def waterfall_once(args: argparse.Namespace, work: Path, redis_url: str) -> dict[str, dict[str, Any]]:
    """One pass over every layer of every path: the bare app, the authority, then each layer app in turn."""
    log = work / "servers.log"
    seconds, conns, threads, kind, workers = args.duration, args.connections, args.threads, "granian", 2
    port = free_port()
    env = production_env(work, redis_url, port)
    caller = demo.dev_token(work / "portal", role="operator", sub="7", location="1", ttl=86400)
    base = f"http://127.0.0.1:{port}"
    run: dict[str, dict[str, Any]] = {path: {} for path in WATERFALL}

    def scenario(path: str, layer: str, pid: int, url: str, how: tuple[str, list[str]]) -> None:
        run[path][layer] = measured(pid, url, how[0], how[1], seconds, conns=conns, threads=threads)

    with server(kind, "bench.bare:app", port, workers=workers, env=env, log=log) as pid:
        wrk(f"{base}/bare", "get.lua", ["-"], WARMUP_S, connections=conns, threads=threads)
        bare = measured(pid, f"{base}/bare", "get.lua", ["-"], seconds, conns=conns, threads=threads)
        for path in WATERFALL:
            run[path]["bare"] = bare
    with server(kind, "authority.asgi:app", port, workers=workers, env=env, log=log) as pid:
        mint_url = f"{base}/api/sys/users/impersonate?coworkerId=42"
        wrk(mint_url, "get.lua", [caller], WARMUP_S, connections=conns, threads=threads)
        scenario("mint", "full", pid, mint_url, ("get.lua", [caller]))
        tokens = asyncio.run(premint(env, int(run["mint"]["full"]["rps"] * seconds * 1.5) + 2000))
        write_tokens(work, tokens, threads)
        scenario("exchange", "full", pid, f"{base}/api/sys/users/exchange", ("exchange.lua", [str(work / "tokens_")]))
        access, unspent = asyncio.run(session_tokens(env))
        introspection = ("post.lua", [f"token={access}", "application/x-www-form-urlencoded", caller])
        scenario("introspection", "full", pid, f"{base}/oauth2/introspect", introspection)
    exchange = ("post.lua", [msgspec.json.encode({"token": unspent}).decode(), "application/json", "-"])
    request = {"mint": ("get.lua", [caller]), "exchange": exchange, "introspection": introspection}
    uses: dict[str, list[str]] = {}  # layer app -> the paths it is a layer of (post_stack serves two)
    for path, layers in WATERFALL.items():
        for layer, _ in layers:
            if layer not in ("bare", "full"):
                uses.setdefault(layer, []).append(path)
    for layer, paths in uses.items():
        with server(kind, f"bench.waterfall:{layer}", port, workers=workers, env=env, log=log) as pid:
            script, wrk_args = request[paths[0]]
            wrk(f"{base}/w", script, wrk_args, WARMUP_S, connections=conns, threads=threads)
            for path in paths:
                scenario(path, layer, pid, f"{base}/w", request[path])
    return run


def _spread(values: list[float]) -> str:
    ordered = sorted(values)
    median = (
        ordered[len(ordered) // 2]
        if len(ordered) % 2
        else (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    )
    return f"{median:,.0f}" if len(ordered) == 1 else f"{median:,.0f} ({ordered[0]:,.0f}..{ordered[-1]:,.0f})"


def waterfall_table(runs: list[dict[str, dict[str, Any]]]) -> str:
    """Per path and layer: req/s, machine microseconds per request (1e6 / req/s) and what the layer added, the
    servers' CPU microseconds per request and what the layer added; medians over runs, (min..max) when several."""
    rows = []
    for path, layers in WATERFALL.items():
        rows += [
            "",
            f"**{path}** (N={len(runs)}; median (min..max))",
            "",
            "| layer | adds | req/s | x bare | us/req | +us | server CPU us/req | +CPU us | p99 ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        previous = None
        for layer, what in layers:
            got = [r[path][layer] for r in runs]
            added: list[float] = (
                [g["us"] - r[path][previous]["us"] for g, r in zip(got, runs, strict=True)] if previous else []
            )
            added_cpu: list[float] = (
                [g["cpu_us"] - r[path][previous]["cpu_us"] for g, r in zip(got, runs, strict=True)] if previous else []
            )
            ratio = [g["rps"] / r[path]["bare"]["rps"] for g, r in zip(got, runs, strict=True)]
            rows.append(
                f"| {layer} | {what} | {_spread([g['rps'] for g in got])} | {sorted(ratio)[len(ratio) // 2]:.2f} | "
                f"{_spread([g['us'] for g in got])} | {_spread(added) if added else ''} | "
                f"{_spread([g['cpu_us'] for g in got])} | {_spread(added_cpu) if added_cpu else ''} | "
                f"{sorted(g['p99_ms'] for g in got)[len(got) // 2]:.1f} |"
            )
            previous = layer
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--servers", nargs="+", default=["uvicorn", "granian"], choices=["uvicorn", "granian"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--soak", type=int, default=600, help="seconds of the memory soak")
    parser.add_argument("--waterfall", action="store_true", help="only the waterfall (bench/waterfall.py)")
    parser.add_argument("--repeat", type=int, default=3, help="waterfall runs (medians and spread over them)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    if args.waterfall:
        figures = run_waterfall(args)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "waterfall.json").write_text(json.dumps(figures, indent=2) + "\n")
        text = f"granian x 2, wrk {args.connections} connections, {args.duration} s per layer" + waterfall_table(
            figures["runs"]
        )
        (RESULTS / "waterfall.md").write_text(text + "\n")
        print(text)
        return
    results = run(args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    (RESULTS / "results.md").write_text(text + "\n")
    chart(results, RESULTS / "chart.png")
    print(text)


if __name__ == "__main__":
    main()
