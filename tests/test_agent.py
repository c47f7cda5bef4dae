"""The remote latency agent, for real on loopback: ``autosculpt agent`` in a subprocess."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
from onnx import TensorProto, helper

from autosculpt.errors import UserError
from autosculpt.search.latency import Target, TargetUnavailable, agent_info, measure
from autosculpt.space.unet import UNet, preset_config

TOKEN = "test-token-1f2e3d"
SHAPE = (1, 1, 32, 32)


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """The URL of an agent on a free loopback port that accepts models up to 1 MB."""
    log = tmp_path_factory.mktemp("agent") / "agent.log"
    env = {**os.environ, "AUTOSCULPT_AGENT_TOKEN": TOKEN}
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "autosculpt.search.cli", "agent", "--port", "0", "--max-mb", "1"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
        )
    url = re.search(r"http://\S+", process.stdout.readline()).group(0)
    yield url
    process.terminate()
    process.wait(timeout=10)
    assert TOKEN not in log.read_text() + process.stdout.read()


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("AUTOSCULPT_AGENT_TOKEN", TOKEN)


def request(url: str, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN):
    """(status, JSON answer) of one raw request to the agent."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    answer = response.status, json.loads(response.read())
    connection.close()
    return answer


def malformed_onnx() -> bytes:
    """A well-formed protobuf whose Conv weight does not fit its input: fails when run."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 3, 3, 3], [0.0] * 27)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])], "bad",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 6, 6])], [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_info_names_the_machine(agent, token):
    info = agent_info(agent)
    assert info["cpu_model"] and info["cpu_count"] >= 1
    assert {"python", "onnxruntime", "numpy"} <= set(info)


def test_measure_through_the_agent_end_to_end(agent, token):
    target = Target(url=agent, min_runs=10, max_seconds=0.2, warmup=2)
    stats = measure(UNet(preset_config("unet-tiny", 1, 4)), SHAPE, target)
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.max_ms
    assert stats.runs >= 10 and stats.input_shape == SHAPE and stats.runtime == "ort"


@pytest.mark.parametrize("sent", [None, "wrong-token"])
def test_missing_or_wrong_token_is_401(agent, sent):
    assert request(agent, "GET", "/info", token=sent)[0] == 401
    assert request(agent, "POST", "/measure?shape=1,1,8,8", b"x" * 1000, token=sent)[0] == 401


def test_wrong_token_is_target_unavailable(agent, monkeypatch):
    monkeypatch.setenv("AUTOSCULPT_AGENT_TOKEN", "wrong-token")
    with pytest.raises(TargetUnavailable, match="refused the token"):
        agent_info(agent)


def test_oversized_model_is_413(agent, token):
    status, answer = request(agent, "POST", "/measure?shape=1,1,8,8", b"\0" * 2_000_000)
    assert status == 413 and "limit" in answer["error"]
    with pytest.raises(UserError, match="--max-mb"):
        measure(UNet(preset_config("unet-small", 1, 4)), SHAPE, Target(url=agent))


@pytest.mark.parametrize("body", [b"garbage \x00\xff" * 100, malformed_onnx()], ids=["garbage", "malformed"])
def test_bad_model_is_400_and_the_agent_lives_on(agent, body):
    status, answer = request(agent, "POST", "/measure?shape=1,1,8,8&min_runs=2", body)
    assert status == 400 and "could not be measured" in answer["error"]
    assert request(agent, "GET", "/info")[0] == 200


def test_bad_parameters_are_400(agent):
    status, answer = request(agent, "POST", "/measure?shape=1,x", b"model")
    assert status == 400 and "shape" in answer["error"]


def test_agent_down_is_target_unavailable(token):
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TargetUnavailable, match="autosculpt agent") as caught:
        measure(UNet(preset_config("unet-tiny", 1, 4)), SHAPE, Target(url=url))
    assert url in str(caught.value) and "\n" not in str(caught.value)
    assert time.monotonic() - started < 15


def test_agent_refuses_to_start_without_a_token():
    env = {key: value for key, value in os.environ.items() if key != "AUTOSCULPT_AGENT_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "autosculpt.search.cli", "agent", "--port", "0"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "token" in done.stderr
