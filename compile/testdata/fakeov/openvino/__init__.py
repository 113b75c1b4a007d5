"""Stand-in for the openvino package, for npu-agent's tests.

It mimics exactly the API surface npu_agent_ov_helper.py uses: get_version, Core.get_property,
Core.read_model, Model.reshape, Core.compile_model, CompiledModel.export_model, CompiledModel.get_property and
Core.import_model, with OpenVINO's behaviour where the helper depends on it (RuntimeError for an unknown device or
property, bytes from export_model, an NPU blob ending in an OVNPU 2.7 trailer whose compatibility descriptor is the
inside of the model's RUNTIME_REQUIREMENTS desc=[...]).

Environment knobs:
  FAKEOV_DEVICES          comma-separated devices present (default "CPU,NPU")
  FAKEOV_VERSION          what get_version returns
  FAKEOV_COMPILE_SLEEP    seconds compile_model sleeps
  FAKEOV_FAIL_COMPILE     compile_model raises RuntimeError with this message
  FAKEOV_CHILD_PID_FILE   compile_model starts "sleep 60" and writes its pid here (process-group tests)
  FAKEOV_NO_RR            "1": RUNTIME_REQUIREMENTS is not available on the compiled model
  FAKEOV_STDOUT_NOISE     "1": write to fd 1 the way native plugins do
  FAKEOV_CALLS            append one JSON line per API call to this file
"""

import hashlib
import json
import os
import struct
import subprocess
import time

_DEVICE_PROPERTIES = {
    "DEVICE_ARCHITECTURE": "4000",
    "NPU_DRIVER_VERSION": 1758000000,
    "NPU_COMPILER_VERSION": (7 << 16) | 21,
    "NPU_COMPILER_TYPE": "DRIVER",
    "NPU_MAX_TILES": 6,
    "NPU_STEPPING": 0,
}
_DESCRIPTOR = "compiler=7.21;npu=4000;t=6;mi=11.4"


def _record(call, **kw):
    path = os.environ.get("FAKEOV_CALLS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(dict(call=call, **kw), sort_keys=True) + "\n")


def _devices():
    return [d.strip() for d in os.environ.get("FAKEOV_DEVICES", "CPU,NPU").split(",") if d.strip()]


def get_version():
    return os.environ.get("FAKEOV_VERSION", "2025.3.0-19807-44526285f24-releases/2025/3")


def _ov_version():
    """major, minor, patch of get_version(), as the plugin writes them into the trailer."""
    return tuple(int(p) for p in get_version().split("-")[0].split("."))


def _runtime_requirements():
    return "meta=2.7;ov=%d.%d.%d;desc=[%s]" % (_ov_version() + (_DESCRIPTOR,))


def _trailer(payload_size):
    desc = _DESCRIPTOR.encode()
    meta = struct.pack("<IHHHQqQQIB", (2 << 16) | 7, *_ov_version(), 0, 0, 0, 0, (7 << 16) | 21, 0)
    meta += struct.pack("<Q", len(desc)) + desc + struct.pack("<B", 0)
    return meta + struct.pack("<Q", payload_size) + b"OVNPU"


class Model:
    def __init__(self, xml, weights):
        self._digest = hashlib.sha256()
        for path in (xml, weights):
            if path:
                with open(path, "rb") as f:
                    self._digest.update(f.read())
        self.shapes = {}

    def reshape(self, shapes):
        if not isinstance(shapes, dict):
            raise TypeError("reshape(): incompatible function arguments")
        for name, dims in shapes.items():
            if not all(isinstance(d, int) and d > 0 for d in dims):
                raise RuntimeError("Check 'dims' failed: invalid shape for %s" % name)
        self.shapes = {k: list(v) for k, v in shapes.items()}
        _record("reshape", shapes=self.shapes)


class CompiledModel:
    def __init__(self, blob):
        self._blob = blob

    def export_model(self):
        return self._blob

    def get_property(self, name):
        if name == "RUNTIME_REQUIREMENTS" and os.environ.get("FAKEOV_NO_RR") != "1":
            return _runtime_requirements()
        raise RuntimeError("Unsupported property %s by CPU plugin" % name)


class Core:
    def _check_device(self, device_name):
        if device_name.split(".")[0] not in _devices():
            raise RuntimeError("Device with \"%s\" name is not registered in the OpenVINO Runtime" % device_name)

    def get_property(self, device_name, name):
        self._check_device(device_name)
        if device_name.startswith("NPU") and name in _DEVICE_PROPERTIES:
            return _DEVICE_PROPERTIES[name]
        raise RuntimeError("Unsupported property %s by %s plugin" % (name, device_name))

    def read_model(self, model, weights=""):
        if not os.path.isfile(model):
            raise RuntimeError("Model file %s cannot be opened!" % model)
        if model.endswith(".xml"):
            weights = weights or model[: -len(".xml")] + ".bin"
            if not os.path.isfile(weights):
                raise RuntimeError("Weights file %s cannot be opened!" % weights)
        _record("read_model", model=model, weights=weights)
        return Model(model, weights)

    def compile_model(self, model, device_name, config=None):
        self._check_device(device_name)
        config = config or {}
        for k, v in config.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("compile_model(): config must map str to str")
        _record("compile_model", device=device_name, config=config)
        if os.environ.get("FAKEOV_STDOUT_NOISE") == "1":
            os.write(1, b"[ INFO ] native plugin chatter on stdout\n")
        pid_file = os.environ.get("FAKEOV_CHILD_PID_FILE")
        if pid_file:
            child = subprocess.Popen(["sleep", "60"])
            with open(pid_file + ".tmp", "w") as f:
                f.write("%d\n" % child.pid)
            os.replace(pid_file + ".tmp", pid_file)
        time.sleep(float(os.environ.get("FAKEOV_COMPILE_SLEEP", "0")))
        if os.environ.get("FAKEOV_FAIL_COMPILE"):
            raise RuntimeError(os.environ["FAKEOV_FAIL_COMPILE"])
        seed = model._digest.copy()
        seed.update(json.dumps([device_name, config, model.shapes], sort_keys=True).encode())
        payload = b"\x7fELF" + seed.digest() * 64
        return CompiledModel(payload + _trailer(len(payload)))

    def import_model(self, model_stream, device_name, config=None):
        self._check_device(device_name)
        data = bytes(model_stream)
        if len(data) < 13 or data[-5:] != b"OVNPU":
            raise RuntimeError("The blob is missing the NPU metadata!")
        (size,) = struct.unpack("<Q", data[-13:-5])
        if size + 4 > len(data) - 13 or (struct.unpack("<I", data[size : size + 4])[0] >> 16) != 2:
            raise RuntimeError("Metadata version is not supported!")
        if data[:4] != b"\x7fELF":
            raise RuntimeError("ZE_RESULT_ERROR_INVALID_NATIVE_BINARY")
        _record("import_model", device=device_name, size=len(data))
        return CompiledModel(data)
