"""A small client of banger's HTTP API (docs/api/openapi.json), standard
library only. It talks to the daemon's Unix socket
(`$XDG_RUNTIME_DIR/banger/api.sock`; the daemon must be running: any
`banger` command starts it), or its loopback port with a token (what
`banger dashboard --json` prints):

    b = Banger(url="http://127.0.0.1:7180", token="...")

    from banger_client import Banger
    b = Banger()
    r = b.run(["sh", "-c", "cat; exit 3"], stdin=b"hi")
    r.code, r.stdout            # 3, b"hi"
"""

import base64
import http.client
import json
import os
import socket
import urllib.parse

__all__ = ["Banger", "BangerError", "Result"]


class BangerError(Exception):
    """An error the daemon answered: its code (as the CLI's) and message."""

    def __init__(self, code, message, status=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class Result:
    """How a command ended, and its output."""

    def __init__(self, code, message, stdout, stderr, events):
        self.code = code
        self.message = message
        self.stdout = stdout
        self.stderr = stderr
        self.events = events

    def __repr__(self):
        return f"Result(code={self.code}, stdout={len(self.stdout)} bytes, stderr={len(self.stderr)} bytes)"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def default_socket():
    run = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return os.path.join(run, "banger", "api.sock")


class Banger:
    """One client; each call opens its own connection (threads may share
    a client)."""

    def __init__(self, socket_path=None, timeout=3600, url=None, token=None):
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout
        self.url = urllib.parse.urlsplit(url) if url else None
        self.token = token

    # -- plumbing -------------------------------------------------------

    def _conn(self):
        if self.url:
            return http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=self.timeout)
        return _UnixConnection(self.socket_path, self.timeout)

    def _request(self, method, path, body=None, query=None, headers=None, raw=False):
        if query:
            path += "?" + urllib.parse.urlencode(query)
        h = dict(headers or {})
        if self.token:
            h["authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None and not raw:
            data = json.dumps(body).encode()
            h["content-type"] = "application/json"
        elif body is not None:
            data = body
            h["content-type"] = "application/octet-stream"
        c = self._conn()
        c.request(method, path, body=data, headers=h)
        return c, c.getresponse()

    @staticmethod
    def _raise(resp, data):
        try:
            e = json.loads(data)["error"]
            raise BangerError(e["code"], e["message"], resp.status)
        except (ValueError, KeyError, TypeError):
            raise BangerError("operation_failed", data.decode(errors="replace"), resp.status)

    def _bytes(self, method, path, body=None, query=None, raw=False):
        c, r = self._request(method, path, body, query, raw=raw)
        try:
            data = r.read()
        finally:
            c.close()
        if r.status != 200:
            self._raise(r, data)
        return data

    def _json(self, method, path, body=None, query=None):
        return json.loads(self._bytes(method, path, body, query))

    def _stream(self, method, path, body, on_event=None):
        """Calls a streamed operation: each event to `on_event` (and the
        output collected); the final result or its error."""
        c, r = self._request(method, path, body, headers={"accept": "application/x-ndjson"})
        try:
            if r.status != 200:
                self._raise(r, r.read())
            out, err, events, result = [], [], [], None
            for line in r:
                msg = json.loads(line)
                if "result" in msg:
                    result = msg["result"]
                    continue
                if "error" in msg:
                    e = msg["error"]
                    raise BangerError(e["code"], e["message"], 200)
                kind = msg.get("event")
                if kind == "stdout":
                    out.append(base64.b64decode(msg["data_b64"]))
                elif kind == "stderr":
                    err.append(base64.b64decode(msg["data_b64"]))
                else:
                    events.append(msg)
                if on_event:
                    on_event(msg)
        finally:
            c.close()
        return result, b"".join(out), b"".join(err), events

    # -- VMs ------------------------------------------------------------

    def status(self):
        return self._json("GET", "/v1/status")

    def vms(self):
        return self._json("GET", "/v1/vms")

    def vm(self, name):
        return self._json("GET", f"/v1/vms/{name}")

    def create(self, on_event=None, **spec):
        """Creates and boots a VM (`name`, `image`, `vcpu`, `memory_mib`,
        `disk_size`, `nat`, `egress`, `from`, ...); its view."""
        result, _, _, _ = self._stream("POST", "/v1/vms", spec, on_event)
        return result

    def start(self, name):
        return self._stream("POST", f"/v1/vms/{name}/start", {})[0]

    def stop(self, name):
        return self._stream("POST", f"/v1/vms/{name}/stop", {})[0]

    def delete(self, name):
        return self._json("DELETE", f"/v1/vms/{name}")

    # -- commands -------------------------------------------------------

    def run(self, command, stdin=None, on_event=None, **spec):
        """`vm run --rm` as one call (`workspace={"path": ...}`,
        `export_patch=...`, and any create field); a Result."""
        body = dict(spec, command=list(command))
        if stdin is not None:
            body["stdin_b64"] = base64.b64encode(stdin).decode()
        result, out, err, events = self._stream("POST", "/v1/run", body, on_event)
        return Result(result.get("code"), result.get("message"), out, err, events)

    def exec(self, name, argv, stdin=None, env=None, cwd=None, on_event=None):
        """A command in a running VM; a Result."""
        body = {"argv": list(argv), "env": env or {}}
        if cwd:
            body["cwd"] = cwd
        if stdin is not None:
            body["stdin_b64"] = base64.b64encode(stdin).decode()
        result, out, err, events = self._stream("POST", f"/v1/vms/{name}/exec", body, on_event)
        return Result(result.get("code"), result.get("message"), out, err, events)

    # -- files and workspaces -------------------------------------------

    def read_file(self, name, path):
        return self._bytes("GET", f"/v1/vms/{name}/files", query={"path": path})

    def write_file(self, name, path, data):
        out = self._bytes("PUT", f"/v1/vms/{name}/files", bytes(data), {"path": path}, raw=True)
        return json.loads(out)

    def list_files(self, name, path):
        return self._json("GET", f"/v1/vms/{name}/files", query={"path": path, "list": "true"})["entries"]

    def prepare_workspace(self, name, path, mode=None):
        body = {"path": os.path.abspath(path)}
        if mode:
            body["mode"] = mode
        return self._stream("POST", f"/v1/vms/{name}/workspace", body)[0]

    def export_patch(self, name, base_commit=None):
        q = {"base_commit": base_commit} if base_commit else None
        return self._bytes("GET", f"/v1/vms/{name}/patch", query=q)

    # -- the rest -------------------------------------------------------

    def snapshot(self, name, snapshot_name=None):
        return self._stream("POST", f"/v1/vms/{name}/snapshots", {"name": snapshot_name})[0]

    def snapshots(self):
        return self._json("GET", "/v1/snapshots")

    def images(self):
        return self._json("GET", "/v1/images")

    def kernels(self):
        return self._json("GET", "/v1/kernels")

    def egress(self, name):
        return self._json("GET", f"/v1/vms/{name}/egress")

    def events(self):
        """VM state changes as they happen: a generator of dicts."""
        c, r = self._request("GET", "/v1/events")
        try:
            if r.status != 200:
                self._raise(r, r.read())
            for line in r:
                line = line.decode().rstrip("\n")
                if line.startswith("data: "):
                    yield json.loads(line[6:])
        finally:
            c.close()
