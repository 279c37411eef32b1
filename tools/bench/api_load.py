"""
tools/bench/api-load: the manager's API under load.  wrk (Debian package
C{wrk}) sends C{list_nodes} and C{get_node_info} (GET, with the bearer
header set by a wrk Lua script, so the token is on no command line) with
200 concurrent connections for 60 s each, to:

  - a real C{twistd -n conpaassql-manager} process on the LOCAL driver
    with one node (a real agent and mariadbd), and
  - in the same run, a bare C{twisted.web} resource in a separate Python
    process with the reactor, answering the same bytes,

and prints requests per second, p99 latency, errors (socket errors and
non-2xx replies: there must be none) and the ratio manager/bare.

Goal (issue 7): the manager at least 0.6x the bare resource, zero errors.

    tools/bench/api-load [--duration 60] [--connections 200] [--threads 2]
                         [--profile FILE]

C{--profile FILE} runs the manager under cProfile and writes its stats
to FILE (then the numbers are not the manager's normal ones).

Last measured (2026-11-25, the shared 2-core machine with other test runs
going on beside it, load average about 7; wrk on the same 2 cores; the
defaults: 200 connections, 2 wrk threads, 60 s per run):

    call           who        req/s   p99 ms  errors
    list_nodes     bare        9924     79.5       0
    list_nodes     manager     6880     98.2       0   ratio 0.69
    get_node_info  bare        9123    114.0       0
    get_node_info  manager     8968     76.4       0   ratio 0.98

The ratios move by +-0.1 from run to run on this loaded machine (the 0.98
is partly the bare run's bad luck).  Before the hot-path changes found with
C{--profile} (10 s runs): 0.48 on both calls; a fifth of each request went
to one log event per request (the access log, now written in batches, see
L{conpaassql.rpc.resource.RPCSite}) and a tenth to two extra Deferreds
around each call (the resource now awaits the dispatcher's coroutine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

BARE = r'''
import sys
from twisted.internet import reactor
from twisted.web import resource, server

replies = {}
for line in open(sys.argv[2], "rb"):
    name, _, body = line.rstrip(b"\n").partition(b" ")
    replies[name] = body

class Bare(resource.Resource):
    isLeaf = True
    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return replies[request.args[b"method"][0]]

port = reactor.listenTCP(0, server.Site(Bare()), interface="127.0.0.1")
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(port.getHost().port))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
reactor.run()
'''

LUA = r'''
wrk.headers["Authorization"] = "Bearer " .. io.open(os.getenv("BENCH_TOKEN_FILE")):read("*l")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
'''

CALLS = {
    "list_nodes": "/?method=list_nodes&id=1",
    "get_node_info": "/?method=get_node_info&id=1&params=%7B%22serviceNodeId%22%3A1%7D",
}


def ensureWrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (apt-get install wrk)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True,
                       stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("wrk is not installed: run 'apt-get install wrk' as root (Debian package "
                     "wrk), then run this again")


def waitForFile(path: str, what: str, process: subprocess.Popen[Any], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start in {timeout:g} s")
        time.sleep(0.1)
    with open(path) as f:
        return f.read().strip()


def call(url: str, token: str, path: str) -> bytes:
    request = urllib.request.Request(url.rstrip("/") + path,
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return bytes(response.read())


def runWrk(wrk: str, url: str, path: str, luaFile: str, tokenFile: str,
           args: argparse.Namespace) -> dict[str, Any]:
    out = subprocess.run(
        [wrk, "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s",
         "--timeout", "10s", "-s", luaFile, url.rstrip("/") + path],
        env={**os.environ, "BENCH_TOKEN_FILE": tokenFile}, capture_output=True, text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    result: dict[str, Any] = json.loads(line[len("WRKJSON "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=60, help="seconds per run (60)")
    parser.add_argument("--connections", type=int, default=200, help="concurrent (200)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--profile", help="run the manager under cProfile, stats to this file")
    args = parser.parse_args()
    wrk = ensureWrk()
    work = tempfile.mkdtemp(prefix="api-load-")
    os.chmod(work, 0o700)
    stateDir = os.path.join(work, "manager")
    config = os.path.join(work, "manager.cnf")
    with open(config, "w") as f:
        f.write("[iaas]\nDRIVER = LOCAL\n")
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    if args.profile:
        profiled = ("import cProfile; from twisted.scripts.twistd import run; "
                    f"cProfile.run('run()', {os.path.abspath(args.profile)!r})")
        twistd = [sys.executable, "-c", profiled]
    managerLog = open(os.path.join(work, "manager.log"), "wb")  # noqa: SIM115
    manager = subprocess.Popen(
        [*twistd, "-n", "--pidfile=", "conpaassql-manager", "--listen",
         "tcp:0:interface=127.0.0.1", "--state-dir", stateDir, "--config", config],
        stdout=managerLog, stderr=subprocess.STDOUT,
    )
    bare: subprocess.Popen[Any] | None = None
    token = ""
    url = ""
    try:
        url = waitForFile(os.path.join(stateDir, "manager-url"), "the manager", manager, 60)
        tokenFile = os.path.join(stateDir, "api-token")
        with open(tokenFile) as f:
            token = f.read().strip()
        body = json.dumps({"method": "add_nodes", "params": {"function": "agent"}, "id": 1})
        request = urllib.request.Request(url, data=body.encode(), headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=60).read()
        deadline = time.monotonic() + 300
        while True:
            info = json.loads(call(url, token, CALLS["get_node_info"]))
            if info["result"]["serviceNode"]["state"] == "RUNNING":
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the node did not start: {info}")
            time.sleep(0.5)
        replies = {name: call(url, token, path) for name, path in CALLS.items()}
        repliesFile = os.path.join(work, "replies")
        with open(repliesFile, "wb") as f:
            f.writelines(name.encode() + b" " + reply + b"\n" for name, reply in replies.items())
        portFile = os.path.join(work, "bare-port")
        bare = subprocess.Popen([sys.executable, "-c", BARE, portFile, repliesFile],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bareURL = f"http://127.0.0.1:{waitForFile(portFile, 'the bare resource', bare, 30)}/"
        luaFile = os.path.join(work, "auth.lua")
        with open(luaFile, "w") as f:
            f.write(LUA)
        print(f"wrk: {args.connections} connections, {args.threads} threads, "
              f"{args.duration} s per run; manager at {url}, bare at {bareURL}", flush=True)
        failed = False
        for name, path in CALLS.items():
            results = {}
            for who, target in (("bare", bareURL), ("manager", url)):
                results[who] = r = runWrk(wrk, target, path, luaFile, tokenFile, args)
                print(f"  {name:14} {who:8} {r['rps']:9.0f} req/s   p99 {r['p99_us'] / 1000:7.1f}"
                      f" ms   p50 {r['p50_us'] / 1000:6.1f} ms   errors {r['errors']}"
                      f" (non-2xx {r['status']}, socket {r['errors'] - r['status']})",
                      flush=True)
                failed |= r["errors"] > 0
            ratio = results["manager"]["rps"] / results["bare"]["rps"]
            print(f"  {name:14} ratio manager/bare {ratio:.2f}  (goal >= 0.6)", flush=True)
            failed |= ratio < 0.6
        if failed:
            print("GOAL MISSED (errors, or a ratio under 0.6)")
            sys.exit(1)
        print("goal met: zero errors, ratio >= 0.6 on both calls")
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait()
        if url and token:
            try:
                body = json.dumps({"method": "shutdown", "params": {}, "id": 9})
                request = urllib.request.Request(url, data=body.encode(), headers={
                    "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=60).read()
                manager.wait(timeout=120)
            except Exception as e:  # noqa: BLE001 - the cleanup goes on
                print(f"shutdown: {e}", file=sys.stderr)
        if manager.poll() is None:
            manager.send_signal(signal.SIGTERM)
            manager.wait(timeout=60)
        managerLog.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
