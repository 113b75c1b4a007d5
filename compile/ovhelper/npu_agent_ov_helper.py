#!/usr/bin/env python3
"""npu-agent's OpenVINO helper.

Contract (normative text: docs/design.md, section 5.5): one JSON request on stdin, one JSON response object on
stdout, logs on stderr. Requests carry "v": 1 and "op": "probe", "compile" or "check". Errors are answered as
{"error": "...", "code": "..."} with exit status 1. Anything OpenVINO or its plugins print to stdout is sent to
stderr, so stdout carries only the response.
"""

import json
import os
import sys
import tempfile
import traceback

PROTOCOL = 1
MAX_REQUEST = 1 << 20

# Device properties read by "probe"; a property the device does not report is listed as absent.
PROBE_PROPERTIES = (
    "DEVICE_ARCHITECTURE",
    "NPU_DRIVER_VERSION",
    "NPU_COMPILER_VERSION",
    "NPU_COMPILER_TYPE",
    "NPU_MAX_TILES",
    "NPU_STEPPING",
    "RUNTIME_REQUIREMENTS",
)


class HelperError(Exception):
    """An error answered to the agent with a code it can act on."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def log(msg):
    print("npu_agent_ov_helper: " + msg, file=sys.stderr, flush=True)


def as_text(value):
    """Property values as the agent reads them: booleans YES/NO, everything else str()."""
    if isinstance(value, bool):
        return "YES" if value else "NO"
    return str(value)


def field(req, name, kind, required=True):
    value = req.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, kind):
        raise HelperError("bad_request", "field %r must be a %s" % (name, kind.__name__))
    return value


def string_map(req, name):
    value = field(req, name, dict, required=False) or {}
    for k, v in value.items():
        if not isinstance(v, str):
            raise HelperError("bad_request", "%s[%r] must be a string" % (name, k))
    return value


def shapes_map(req):
    value = field(req, "shapes", dict, required=False) or {}
    for k, dims in value.items():
        if not isinstance(dims, list) or not dims or not all(isinstance(d, int) and d >= 1 for d in dims):
            raise HelperError("bad_request", "shapes[%r] must be a list of dimensions >= 1" % k)
    return value


def load_openvino():
    try:
        import openvino
    except ImportError as e:
        raise HelperError("no_openvino", "cannot import openvino: %s" % e)
    return openvino


def require_device(core, device):
    try:
        core.get_property(device, "DEVICE_ARCHITECTURE")
    except Exception as e:  # OpenVINO raises RuntimeError for an unknown device
        raise HelperError("no_device", "device %s is not available: %s" % (device, e))


def op_probe(req):
    ov = load_openvino()
    core = ov.Core()
    device = field(req, "device", str)
    require_device(core, device)
    props, absent = {}, []
    for name in PROBE_PROPERTIES:
        try:
            props[name] = as_text(core.get_property(device, name))
        except Exception as e:
            log("property %s not available: %s" % (name, e))
            absent.append(name)
    return {"openvino": ov.get_version(), "properties": props, "absent": absent}


def write_atomic(path, data):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".ovhelper-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def op_compile(req):
    model_path = field(req, "model", str)
    weights = field(req, "weights", str, required=False)
    device = field(req, "device", str)
    props = string_map(req, "properties")
    shapes = shapes_map(req)
    out = field(req, "out", str)
    ov = load_openvino()
    core = ov.Core()
    require_device(core, device)
    log("reading %s" % model_path)
    model = core.read_model(model_path, weights) if weights else core.read_model(model_path)
    if shapes:
        model.reshape({name: list(dims) for name, dims in shapes.items()})
    log("compiling for %s with %s" % (device, json.dumps(props, sort_keys=True)))
    compiled = core.compile_model(model, device, props)
    # The Python API hands the exported blob over as bytes; it is written once and dropped.
    data = compiled.export_model()
    write_atomic(out, data)
    resp = {"out": out, "size": len(data)}
    try:
        resp["runtime_requirements"] = as_text(compiled.get_property("RUNTIME_REQUIREMENTS"))
    except Exception as e:
        log("RUNTIME_REQUIREMENTS not available: %s" % e)
    return resp


def op_check(req):
    blob = field(req, "blob", str)
    device = field(req, "device", str)
    props = string_map(req, "properties")
    ov = load_openvino()
    core = ov.Core()
    require_device(core, device)
    with open(blob, "rb") as f:
        data = f.read()
    core.import_model(data, device, props)
    return {"ok": True}


OPS = {"probe": op_probe, "compile": op_compile, "check": op_check}


def main():
    # Keep the real stdout for the response; point fd 1 at stderr for everything else (native code included).
    response = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        data = sys.stdin.buffer.read(MAX_REQUEST + 1)
        if len(data) > MAX_REQUEST:
            raise HelperError("bad_request", "request larger than %d bytes" % MAX_REQUEST)
        try:
            req = json.loads(data)
        except ValueError as e:
            raise HelperError("bad_request", "request is not JSON: %s" % e)
        if not isinstance(req, dict):
            raise HelperError("bad_request", "request is not a JSON object")
        if req.get("v") != PROTOCOL:
            raise HelperError("bad_request", "unsupported protocol version %r (want %d)" % (req.get("v"), PROTOCOL))
        op = OPS.get(req.get("op"))
        if op is None:
            raise HelperError("bad_request", "unknown op %r" % req.get("op"))
        resp, status = op(req), 0
    except HelperError as e:
        resp, status = {"error": str(e), "code": e.code}, 1
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        resp, status = {"error": "%s: %s" % (type(e).__name__, e), "code": "failed"}, 1
    response.write(json.dumps(resp, separators=(",", ":")) + "\n")
    response.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
