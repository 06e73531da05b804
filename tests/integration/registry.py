"""A small Schema Registry for the tests: the subset of Confluent's REST API that
confluent-kafka's client and serializers use (register a schema under a subject,
fetch one by id or GUID, a subject's versions). No registry server can be installed
here (Karapace is not on PyPI), so the real serializers talk HTTP to this one, and
so does our consumer side. Optional basic auth, to check credentials pass through."""
import base64
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Registry:
    def __init__(self, user: str | None = None, password: str | None = None):
        self.schemas: dict[int, dict] = {}          # id -> {"schema", "schemaType", "guid"}
        self.subjects: dict[str, list[int]] = {}    # subject -> ids, by version
        self.auth = None if user is None else "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.requests: list[str] = []
        self.lock = threading.Lock()
        handler = type("H", (_Handler,), {"registry": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()

    def register(self, subject: str, body: dict) -> dict:
        with self.lock:
            kind = body.get("schemaType", "AVRO")
            known = [i for i, s in self.schemas.items() if s["schema"] == body["schema"] and s["schemaType"] == kind]
            sid = known[0] if known else len(self.schemas) + 1
            if not known:
                self.schemas[sid] = {"schema": body["schema"], "schemaType": kind, "guid": str(uuid.uuid4())}
            versions = self.subjects.setdefault(subject, [])
            if sid not in versions:
                versions.append(sid)
            return self.entry(sid, subject, versions.index(sid) + 1)

    def entry(self, sid: int, subject: str | None = None, version: int | None = None) -> dict:
        s = self.schemas[sid]
        out = {"id": sid, "guid": s["guid"], "schema": s["schema"], "schemaType": s["schemaType"]}
        return out | ({"subject": subject, "version": version} if subject else {})


class _Handler(BaseHTTPRequestHandler):
    registry: Registry

    def log_message(self, *args):
        pass

    def _send(self, code: int, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.registry.auth and self.headers.get("Authorization") != self.registry.auth:
            self._send(401, {"error_code": 40101, "message": "Unauthorized"})
            return False
        return True

    def do_GET(self):
        path = self.path.split("?")[0]
        self.registry.requests.append(f"GET {path}")
        if not self._authorized():
            return
        r = self.registry
        if m := re.fullmatch(r"/schemas/ids/(\d+)", path):
            sid = int(m.group(1))
            return self._send(200, r.entry(sid)) if sid in r.schemas else \
                self._send(404, {"error_code": 40403, "message": f"Schema {sid} not found"})
        if m := re.fullmatch(r"/schemas/guids/([0-9a-f-]+)", path):
            found = [sid for sid, s in r.schemas.items() if s["guid"] == m.group(1)]
            return self._send(200, r.entry(found[0])) if found else \
                self._send(404, {"error_code": 40403, "message": "Schema not found"})
        if path == "/subjects":
            return self._send(200, sorted(r.subjects))
        if m := re.fullmatch(r"/subjects/([^/]+)/versions", path):
            return self._send(200, list(range(1, len(r.subjects.get(m.group(1), [])) + 1)))
        if m := re.fullmatch(r"/subjects/([^/]+)/versions/(latest|\d+)", path):
            ids = r.subjects.get(m.group(1))
            if not ids:
                return self._send(404, {"error_code": 40401, "message": "Subject not found"})
            v = len(ids) if m.group(2) == "latest" else int(m.group(2))
            return self._send(200, r.entry(ids[v - 1], m.group(1), v))
        self._send(404, {"error_code": 404, "message": f"not implemented: {path}"})

    def do_POST(self):
        path = self.path.split("?")[0]
        self.registry.requests.append(f"POST {path}")
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if m := re.fullmatch(r"/subjects/([^/]+)/versions", path):
            return self._send(200, self.registry.register(m.group(1), body))
        if m := re.fullmatch(r"/subjects/([^/]+)", path):   # lookup: is this schema registered?
            for sid in self.registry.subjects.get(m.group(1), []):
                if self.registry.schemas[sid]["schema"] == body.get("schema"):
                    return self._send(200, self.registry.entry(sid, m.group(1)))
            return self._send(404, {"error_code": 40403, "message": "Schema not found"})
        self._send(404, {"error_code": 404, "message": f"not implemented: {path}"})
