"""Import-or-compile OpenVINO models through the local npu-agent daemon.

    import openvino as ov
    import npu_agent

    core = ov.Core()
    compiled = npu_agent.compile_model(core, "/models/resnet50.xml", "NPU",
                                       config={"PERFORMANCE_HINT": "LATENCY"},
                                       shapes={"input": [1, 3, 224, 224]})

compile_model asks the agent (HTTP over its unix socket) for a blob of the model compiled for this host's NPU
stack; the agent takes it from its store, fetches it from LAN peers or compiles it once for the fleet. The blob is
imported with core.import_model. If no agent is running, the agent fails, or the import fails, the model is
compiled here as OpenVINO would, and the blob is given to the agent (best effort) so the fleet can reuse it.

Standard library only (plus openvino). The socket is $NPU_AGENT_SOCKET or /run/npu-agent/api.sock; the caller
must be allowed to connect (member of the npu-agent group).
"""

import http.client
import json
import logging
import os
import socket as _socket
import urllib.parse

__all__ = ["compile_model", "Client", "AgentError", "AgentUnavailable", "DEFAULT_SOCKET", "make_profile"]

DEFAULT_SOCKET = "/run/npu-agent/api.sock"

# Connecting to a live daemon is immediate; a missing one must not delay the application.
CONNECT_TIMEOUT = 2.0
# Bounds what is read of a JSON answer.
MAX_JSON = 16 << 20

log = logging.getLogger("npu_agent")
log.addHandler(logging.NullHandler())  # the application decides where messages go


class AgentError(Exception):
    """The daemon answered with an error (status, code as in docs/operations.md) or could not be understood."""

    def __init__(self, message, status=0, code=""):
        super().__init__(message)
        self.status = status
        self.code = code


class AgentUnavailable(AgentError):
    """No daemon answers on the socket."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection over a unix socket."""

    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(self._path)
            sock.settimeout(self.timeout)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """A minimal client of the daemon's local API."""

    def __init__(self, socket=None, timeout=None):
        """timeout (seconds) bounds each read; None waits as long as the agent works (a compile can take long)."""
        self.socket = socket or os.environ.get("NPU_AGENT_SOCKET") or DEFAULT_SOCKET
        self.timeout = timeout

    def _request(self, method, path, body=None, content_type=None):
        conn = _UnixHTTPConnection(self.socket, self.timeout)
        try:
            try:
                conn.connect()
            except OSError as e:
                raise AgentUnavailable("no npu-agent daemon on %s: %s" % (self.socket, e)) from e
            headers = {}
            if content_type:
                headers["Content-Type"] = content_type
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise AgentError("npu-agent daemon: %s %s: %s" % (method, path, e)) from e
        finally:
            conn.close()
        if resp.status // 100 != 2:
            try:
                err = json.loads(data[:65536])
                raise AgentError("npu-agent daemon: %s" % err["error"], resp.status, err["code"])
            except (ValueError, KeyError, TypeError):
                raise AgentError("npu-agent daemon: %s %s: HTTP %d" % (method, path, resp.status), resp.status) from None
        return resp, data

    def _json(self, method, path, body=None, content_type=None):
        resp, data = self._request(method, path, body, content_type)
        if len(data) > MAX_JSON:
            raise AgentError("npu-agent daemon: answer to %s %s is too large" % (method, path))
        try:
            return json.loads(data)
        except ValueError as e:
            raise AgentError("npu-agent daemon: answer to %s %s is not JSON: %s" % (method, path, e)) from e

    def health(self):
        """True if the daemon answers its health check."""
        try:
            return self._json("GET", "/v1/healthz").get("status") == "ok"
        except AgentError:
            return False

    def ensure(self, model_path, profile):
        """Ask for a blob of model_path (absolute .xml or .onnx) compiled with profile; returns the answer dict."""
        body = json.dumps({"model": os.path.abspath(model_path), "profile": profile}).encode()
        return self._json("POST", "/v1/ensure", body, "application/json")

    def blob(self, cid):
        """The bytes of a stored blob."""
        resp, data = self._request("GET", "/v1/blobs/" + urllib.parse.quote(cid, safe=""))
        length = resp.getheader("Content-Length")
        if length is None or int(length) != len(data):
            raise AgentError("npu-agent daemon: blob %s arrived incomplete" % cid)
        return data

    def put(self, model_path, profile, blob):
        """Give the daemon a blob compiled here (bytes); returns the answer dict."""
        query = urllib.parse.urlencode({"model": os.path.abspath(model_path),
                                        "profile": json.dumps(profile, sort_keys=True)})
        return self._json("POST", "/v1/blobs?" + query, blob, "application/octet-stream")


def make_profile(device="NPU", config=None, shapes=None):
    """The agent's profile for a compile: device, properties as strings, static input shapes."""
    profile = {"device": device}
    if config:
        profile["properties"] = {str(k): _property_value(v) for k, v in config.items()}
    if shapes:
        profile["shapes"] = {str(k): [int(d) for d in v] for k, v in shapes.items()}
    return profile


def _property_value(v):
    # OpenVINO prints enums such as PerformanceMode.LATENCY; the agent wants what the property string is.
    if isinstance(v, bool):
        return "YES" if v else "NO"
    name = getattr(v, "name", None)
    return name if isinstance(name, str) else str(v)


def _cid_string(cid):
    # Go's CID type encodes as {"/": "bafk..."}.
    if isinstance(cid, dict):
        cid = cid.get("/")
    if not isinstance(cid, str) or not cid:
        raise AgentError("npu-agent daemon: answer has no blob CID")
    return cid


def _read_blob(client, answer):
    """The blob's bytes: from the file the agent names, or streamed over the API if this process cannot read it."""
    path = answer.get("path")
    if path:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            log.debug("npu-agent: cannot read %s (%s); streaming the blob over the API", path, e)
    return client.blob(_cid_string(answer.get("cid")))


def compile_model(core, model_path, device="NPU", config=None, shapes=None, socket=None):
    """Return a compiled model of model_path for device: imported from the agent's blob when possible, else
    compiled here (and the blob handed to the agent, best effort).

    core: an openvino.Core. model_path: the model's .xml (with its .bin beside it) or .onnx. config: compile
    properties. shapes: {input name: [dims]} for a static reshape (the NPU needs static shapes). socket: the
    agent's socket (default $NPU_AGENT_SOCKET or /run/npu-agent/api.sock).
    """
    model_path = os.path.abspath(model_path)
    config = dict(config or {})
    profile = make_profile(device, config, shapes)
    client = Client(socket)
    agent_up = True
    try:
        answer = client.ensure(model_path, profile)
        data = _read_blob(client, answer)
        compiled = core.import_model(data, device, config)
        log.info("npu-agent: imported %s (%s, %d bytes)", model_path, answer.get("source"), len(data))
        return compiled
    except AgentUnavailable as e:
        agent_up = False
        log.info("npu-agent: %s; compiling locally", e)
    except AgentError as e:
        log.warning("npu-agent: %s; compiling locally", e)
    except Exception as e:  # noqa: BLE001 - any import failure (RuntimeError from OpenVINO) means compile here
        log.warning("npu-agent: importing the agent's blob of %s failed: %s; compiling locally", model_path, e)

    model = core.read_model(model_path)
    if shapes:
        model.reshape({k: list(v) for k, v in shapes.items()})
    compiled = core.compile_model(model, device, config)
    if agent_up:
        try:
            answer = client.put(model_path, profile, compiled.export_model())
            log.info("npu-agent: gave the agent the blob of %s (%s)", model_path, _cid_string(answer.get("cid")))
        except Exception as e:  # noqa: BLE001 - sharing is best effort; the application has its model
            log.warning("npu-agent: could not give the agent the blob of %s: %s", model_path, e)
    return compiled
