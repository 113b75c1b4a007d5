"""Tests of npu_agent.py against a fake API server on a unix socket and the stand-in openvino package.

The stand-in lives at compile/testdata/fakeov (or $NPU_AGENT_FAKEOV); the Go test in this directory runs these
tests as part of `go test ./...`.
"""

import http.server
import json
import os
import shutil
import socketserver
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
FAKEOV = os.environ.get("NPU_AGENT_FAKEOV") or os.path.join(HERE, "..", "..", "compile", "testdata", "fakeov")


def setUpModule():
    if not os.path.isfile(os.path.join(FAKEOV, "openvino", "__init__.py")):
        raise unittest.SkipTest("stand-in openvino package not found at %s" % FAKEOV)
    sys.path.insert(0, os.path.abspath(FAKEOV))
    sys.path.insert(0, HERE)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FakeAgent:
    """A stand-in daemon: answers /v1/ensure as told, serves and accepts blobs, records every request."""

    def __init__(self, socket_path):
        self.socket_path = socket_path
        self.ensure_status, self.ensure_answer = 404, {"error": "blob not found", "code": "not_found"}
        self.put_status = 200
        self.blobs = {}
        self.requests = []
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def address_string(self):
                return "unix"

            def log_message(self, *args):
                pass

            def _reply(self, status, body, ctype="application/json"):
                if not isinstance(body, bytes):
                    body = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _record(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                agent.requests.append((self.command, self.path, dict(self.headers), body))
                return body

            def do_GET(self):
                self._record()
                if self.path == "/v1/healthz":
                    return self._reply(200, {"status": "ok"})
                if self.path.startswith("/v1/blobs/"):
                    cid = self.path[len("/v1/blobs/"):]
                    if cid in agent.blobs:
                        return self._reply(200, agent.blobs[cid], "application/octet-stream")
                    return self._reply(404, {"error": "blob not found", "code": "not_found"})
                self._reply(404, {"error": "no such endpoint", "code": "no_such_endpoint"})

            def do_POST(self):
                body = self._record()
                if self.path == "/v1/ensure":
                    return self._reply(agent.ensure_status, agent.ensure_answer)
                if self.path.startswith("/v1/blobs?"):
                    if agent.put_status != 200:
                        return self._reply(agent.put_status, {"error": "disk on fire", "code": "internal"})
                    cid = "bafkput%d" % len(agent.blobs)
                    agent.blobs[cid] = body
                    return self._reply(200, {"cid": {"/": cid}, "source": "store", "size": len(body)})
                self._reply(404, {"error": "no such endpoint", "code": "no_such_endpoint"})

        self.server = _UnixHTTPServer(socket_path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def paths(self):
        return [(m, p.split("?")[0]) for m, p, _, _ in self.requests]


class CompileModelTest(unittest.TestCase):
    def setUp(self):
        import openvino
        import npu_agent

        self.ov, self.npu_agent = openvino, npu_agent
        self.dir = tempfile.mkdtemp(prefix="npuagent")
        self.addCleanup(shutil.rmtree, self.dir)
        self.xml = os.path.join(self.dir, "model.xml")
        with open(self.xml, "w") as f:
            f.write("<net/>")
        with open(os.path.join(self.dir, "model.bin"), "wb") as f:
            f.write(b"\x01" * 64)
        self.calls_file = os.path.join(self.dir, "calls.jsonl")
        os.environ["FAKEOV_CALLS"] = self.calls_file
        self.addCleanup(os.environ.pop, "FAKEOV_CALLS", None)
        self.socket = os.path.join(self.dir, "api.sock")
        self.core = openvino.Core()
        self.config = {"PERFORMANCE_HINT": "LATENCY"}
        self.shapes = {"input": [1, 3, 8, 8]}

    def start_agent(self):
        agent = FakeAgent(self.socket)
        self.addCleanup(agent.close)
        return agent

    def calls(self):
        if not os.path.exists(self.calls_file):
            return []
        with open(self.calls_file) as f:
            return [json.loads(line)["call"] for line in f]

    def good_blob(self):
        """A blob the stand-in imports, made without recording calls."""
        saved = os.environ.pop("FAKEOV_CALLS")
        try:
            model = self.core.read_model(self.xml)
            return self.core.compile_model(model, "NPU", dict(self.config)).export_model()
        finally:
            os.environ["FAKEOV_CALLS"] = saved

    def compile(self):
        return self.npu_agent.compile_model(self.core, self.xml, "NPU", config=self.config, shapes=self.shapes,
                                            socket=self.socket)

    def test_imports_the_agents_blob(self):
        agent = self.start_agent()
        blob = self.good_blob()
        path = os.path.join(self.dir, "blob")
        with open(path, "wb") as f:
            f.write(blob)
        agent.ensure_status = 200
        agent.ensure_answer = {"cid": {"/": "bafkgood"}, "path": path, "source": "peer", "size": len(blob)}

        compiled = self.compile()

        self.assertEqual(compiled.export_model(), blob)
        self.assertEqual(self.calls(), ["import_model"])
        self.assertEqual(agent.paths(), [("POST", "/v1/ensure")])
        _, _, headers, body = agent.requests[0]
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(json.loads(body), {
            "model": self.xml,
            "profile": {"device": "NPU", "properties": {"PERFORMANCE_HINT": "LATENCY"},
                        "shapes": {"input": [1, 3, 8, 8]}},
        })

    def test_streams_when_the_path_is_unreadable(self):
        agent = self.start_agent()
        blob = self.good_blob()
        agent.blobs["bafkgood"] = blob
        agent.ensure_status = 200
        agent.ensure_answer = {"cid": {"/": "bafkgood"}, "path": os.path.join(self.dir, "no-such-file"),
                               "source": "store", "size": len(blob)}

        compiled = self.compile()

        self.assertEqual(compiled.export_model(), blob)
        self.assertEqual(agent.paths(), [("POST", "/v1/ensure"), ("GET", "/v1/blobs/bafkgood")])
        self.assertEqual(self.calls(), ["import_model"])

    def test_no_agent_compiles_locally(self):
        start = time.monotonic()
        compiled = self.compile()
        self.assertLess(time.monotonic() - start, 5)
        self.assertTrue(compiled.export_model().endswith(b"OVNPU"))
        self.assertEqual(self.calls(), ["read_model", "reshape", "compile_model"])

    def test_stale_socket_compiles_locally(self):
        import socket

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.socket)
        s.close()  # the file stays, nobody listens
        compiled = self.compile()
        self.assertTrue(compiled.export_model().endswith(b"OVNPU"))

    def test_agent_error_compiles_and_shares(self):
        agent = self.start_agent()
        agent.ensure_status = 503
        agent.ensure_answer = {"error": "no compiler available", "code": "no_compiler"}

        compiled = self.compile()

        blob = compiled.export_model()
        self.assertEqual(self.calls(), ["read_model", "reshape", "compile_model"])
        self.assertEqual(agent.paths(), [("POST", "/v1/ensure"), ("POST", "/v1/blobs")])
        _, path, headers, body = agent.requests[1]
        self.assertEqual(body, blob)
        self.assertEqual(headers["Content-Type"], "application/octet-stream")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query, strict_parsing=True)
        self.assertEqual(query["model"], [self.xml])
        self.assertEqual(json.loads(query["profile"][0])["shapes"], {"input": [1, 3, 8, 8]})

    def test_failed_import_compiles_and_shares(self):
        agent = self.start_agent()
        path = os.path.join(self.dir, "bad-blob")
        with open(path, "wb") as f:
            f.write(b"not a blob")
        agent.ensure_status = 200
        agent.ensure_answer = {"cid": {"/": "bafkbad"}, "path": path, "source": "peer", "size": 10}

        compiled = self.compile()

        self.assertTrue(compiled.export_model().endswith(b"OVNPU"))
        self.assertEqual(self.calls(), ["read_model", "reshape", "compile_model"])
        self.assertEqual(agent.paths()[-1], ("POST", "/v1/blobs"))

    def test_failed_share_is_not_fatal(self):
        agent = self.start_agent()
        agent.put_status = 500
        compiled = self.compile()
        self.assertTrue(compiled.export_model().endswith(b"OVNPU"))
        self.assertEqual(agent.paths()[-1], ("POST", "/v1/blobs"))

    def test_local_compile_failure_raises(self):
        os.environ["FAKEOV_FAIL_COMPILE"] = "out of memory"
        self.addCleanup(os.environ.pop, "FAKEOV_FAIL_COMPILE", None)
        with self.assertRaisesRegex(RuntimeError, "out of memory"):
            self.compile()

    def test_client_errors(self):
        agent = self.start_agent()
        client = self.npu_agent.Client(self.socket)
        self.assertTrue(client.health())
        with self.assertRaises(self.npu_agent.AgentError) as cm:
            client.ensure(self.xml, {"device": "NPU"})
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "not_found"))
        agent.close()
        self.assertFalse(self.npu_agent.Client(os.path.join(self.dir, "none.sock")).health())
        with self.assertRaises(self.npu_agent.AgentUnavailable):
            self.npu_agent.Client(os.path.join(self.dir, "none.sock")).ensure(self.xml, {"device": "NPU"})

    def test_make_profile(self):
        import enum

        class Mode(enum.Enum):
            LATENCY = 1

        self.assertEqual(self.npu_agent.make_profile("NPU", {"PERFORMANCE_HINT": Mode.LATENCY, "NPU_TURBO": True,
                                                             "NPU_TILES": 2}, {"x": (1, 2)}),
                         {"device": "NPU", "properties": {"PERFORMANCE_HINT": "LATENCY", "NPU_TURBO": "YES",
                                                          "NPU_TILES": "2"}, "shapes": {"x": [1, 2]}})
        self.assertEqual(self.npu_agent.make_profile("NPU.0"), {"device": "NPU.0"})


if __name__ == "__main__":
    unittest.main()
