"""Instance groups and the dynamic batcher, observed through statistics and model outputs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

SLEEP_IO = """
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "OUTPUT2" data_type: TYPE_INT32 dims: [ 1 ] }
]
"""


def sleep_model(repo, name, extra="", max_batch_size=8, count=1):
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(
        f'backend: "test_sleep"\nmax_batch_size: {max_batch_size}\n{SLEEP_IO}\n'
        f"instance_group [{{ kind: KIND_CPU count: {count} }}]\n{extra}\n"
    )


def one(ms: float, batch: int = 1):
    inp = httpclient.InferInput("INPUT0", [batch, 1], "FP32")
    inp.set_data_from_numpy(np.full((batch, 1), ms, dtype=np.float32))
    return [inp]


def wait_pending(srv, model: str, count: int, timeout: float = 20.0) -> bool:
    """Wait until the metrics show at least ``count`` queued requests for ``model``."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = urlopen(srv.metrics_url, timeout=5).read().decode()
        for family in text_string_to_metric_families(text):
            if family.name == "nv_inference_pending_request_count":
                for sample in family.samples:
                    if sample.labels.get("model") == model and sample.value >= count:
                        return True
        time.sleep(0.02)
    return False


def stats(client, name):
    return client.get_inference_statistics(name)["model_stats"][0]


class Calls:
    """Requests sent from threads, each with its own client; results or errors kept in order."""

    def __init__(self, url):
        self.url = url
        self.threads: list[threading.Thread] = []
        self.results: dict[int, object] = {}
        self.done_at: dict[object, float] = {}

    def send(self, key, model, inputs, **kwargs):
        def run():
            c = httpclient.InferenceServerClient(self.url, network_timeout=60)
            try:
                self.results[key] = c.infer(model, inputs, **kwargs)
            except InferenceServerException as exc:
                self.results[key] = exc
            finally:
                self.done_at[key] = time.monotonic()
                c.close()

        t = threading.Thread(target=run)
        t.start()
        self.threads.append(t)

    def join(self):
        for t in self.threads:
            t.join(60)
        return self.results


@pytest.fixture
def start(server_factory, tmp_path):
    clients = []

    def _start(build):
        repo = tmp_path / "repo"
        repo.mkdir(exist_ok=True)
        build(repo)
        srv = server_factory(repo, "--plugin", "naiad_test_backends")
        clients.append(httpclient.InferenceServerClient(srv.url))
        return srv, clients[-1]

    yield _start
    # closed here, not by the garbage collector: a client's pool closed from __del__ at some
    # later test's collection could raise there (an "unraisable" exception failing that test)
    for client in clients:
        client.close()


def test_count_n_runs_at_most_n_at_once(start):
    srv, client = start(lambda r: sleep_model(r, "pool", count=2))
    calls = Calls(srv.url)
    for i in range(6):
        calls.send(i, "pool", one(300))
    results = calls.join()
    peaks = {int(r.as_numpy("OUTPUT2")[0, 0]) for r in results.values()}
    assert max(peaks) == 2  # two instances ran together, never three
    s = stats(client, "pool")
    assert s["execution_count"] == 6  # default scheduler: one execution per request


def test_dynamic_batching_merges_and_splits_rows(start, models, tmp_path):
    def build(repo):
        models.write_mlp(repo)
        cfg = repo / "mlp" / "config.pbtxt"
        cfg.write_text(
            cfg.read_text()
            + "\ninstance_group [{ kind: KIND_CPU count: 1 }]\n"
            + "dynamic_batching { max_queue_delay_microseconds: 300000 }\n"
        )

    srv, client = start(build)
    rng = np.random.default_rng(3)
    xs = {i: rng.standard_normal((1 + i % 2, 16)).astype(np.float32) for i in range(6)}
    calls = Calls(srv.url)
    for i, x in xs.items():
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        calls.send(i, "mlp", [inp])
    results = calls.join()
    for i, x in xs.items():
        np.testing.assert_allclose(
            results[i].as_numpy("output"), models.mlp_numpy(x), rtol=1e-5, atol=1e-5
        )
    s = stats(client, "mlp")
    assert s["inference_stats"]["success"]["count"] == 6
    assert s["inference_count"] == sum(x.shape[0] for x in xs.values())
    assert s["execution_count"] < 6
    assert max(b["batch_size"] for b in s["batch_stats"]) > 2


def test_preferred_batch_size_sends_without_waiting(start):
    # the delay is long; four requests make a preferred batch and go at once
    srv, client = start(
        lambda r: sleep_model(
            r,
            "pref",
            "dynamic_batching { preferred_batch_size: [ 4 ] "
            "max_queue_delay_microseconds: 20000000 }",
        )
    )
    calls = Calls(srv.url)
    for i in range(4):
        calls.send(i, "pref", one(1))
    results = calls.join()
    assert all(not isinstance(r, Exception) for r in results.values())
    s = stats(client, "pref")
    assert s["execution_count"] == 1
    assert [b["batch_size"] for b in s["batch_stats"]] == [4]


def test_queue_full_is_rejected(start):
    srv, client = start(
        lambda r: sleep_model(
            r,
            "small",
            "dynamic_batching { default_queue_policy { max_queue_size: 1 } }",
            max_batch_size=1,
        )
    )
    calls = Calls(srv.url)
    calls.send("busy", "small", one(1500))
    time.sleep(0.5)  # the first request is executing; the queue is empty
    calls.send("queued", "small", one(1))
    assert wait_pending(srv, "small", 1)
    with pytest.raises(InferenceServerException) as info:
        client.infer("small", one(1))
    assert "Exceeds maximum queue size" in info.value.message()
    assert info.value.status() == "503"
    results = calls.join()
    assert not isinstance(results["busy"], Exception)
    assert not isinstance(results["queued"], Exception)


@pytest.mark.parametrize("action", ["REJECT", "DELAY"])
def test_queue_timeout(start, action):
    srv, client = start(
        lambda r: sleep_model(
            r,
            "slow",
            f"dynamic_batching {{ default_queue_policy {{ timeout_action: {action} "
            "default_timeout_microseconds: 100000 } }",
            max_batch_size=1,
        )
    )
    calls = Calls(srv.url)
    calls.send("busy", "slow", one(700))
    time.sleep(0.2)
    calls.send("waiting", "slow", one(1))
    results = calls.join()
    assert not isinstance(results["busy"], Exception)
    if action == "REJECT":
        assert isinstance(results["waiting"], InferenceServerException)
        assert "Request timeout expired" in results["waiting"].message()
        assert results["waiting"].status() == "503"
    else:
        assert not isinstance(results["waiting"], Exception)
    assert client.infer("slow", one(1)).as_numpy("OUTPUT0")[0, 0] == 1


def test_request_timeout_override(start):
    srv, client = start(
        lambda r: sleep_model(
            r,
            "override",
            "dynamic_batching { default_queue_policy { allow_timeout_override: true "
            "default_timeout_microseconds: 10000000 } }",
            max_batch_size=1,
        )
    )
    calls = Calls(srv.url)
    calls.send("busy", "override", one(700))
    time.sleep(0.2)
    calls.send("short", "override", one(1), timeout=50000)  # 50 ms < the 10 s default
    results = calls.join()
    assert "Request timeout expired" in results["short"].message()


def test_priorities_served_in_order(start):
    srv, client = start(
        lambda r: sleep_model(
            r,
            "prio",
            "dynamic_batching { priority_levels: 2 default_priority_level: 2 }",
            max_batch_size=1,
        )
    )
    calls = Calls(srv.url)
    calls.send("busy", "prio", one(1500))
    time.sleep(0.5)  # the busy request is executing: the others queue behind it
    for i in range(3):
        calls.send(f"low{i}", "prio", one(1), priority=2)
        # each low request is queued before the next is sent, so their order is known
        assert wait_pending(srv, "prio", i + 1)
    calls.send("high", "prio", one(1), priority=1)
    results = calls.join()
    order = {k: int(r.as_numpy("OUTPUT1")[0, 0]) for k, r in results.items()}
    assert order["busy"] < order["high"] < min(order[f"low{i}"] for i in range(3))
    assert order["low0"] < order["low1"] < order["low2"]


def test_failing_batch_fails_only_itself(start):
    def build(repo):
        (repo / "failing" / "1").mkdir(parents=True)
        (repo / "failing" / "config.pbtxt").write_text(
            'backend: "test_fail"\nmax_batch_size: 8\n'
            'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
            'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
            "instance_group [{ kind: KIND_CPU count: 1 }]\n"
            "dynamic_batching { }\n"
        )

    srv, client = start(build)
    with pytest.raises(InferenceServerException, match="negative input"):
        client.infer("failing", one(-1))
    assert client.infer("failing", one(3)).as_numpy("OUTPUT0")[0, 0] == 3
    s = stats(client, "failing")
    assert s["inference_stats"]["fail"]["count"] == 1
    assert s["inference_stats"]["success"]["count"] == 1


def test_preserve_ordering(start):
    srv, client = start(
        lambda r: sleep_model(
            r, "ordered", "dynamic_batching { preserve_ordering: true }", max_batch_size=1, count=2
        )
    )
    for _attempt in range(3):
        calls = Calls(srv.url)
        sent = time.monotonic()
        calls.send("slow", "ordered", one(800))
        time.sleep(0.2)
        calls.send("fast", "ordered", one(1))
        results = calls.join()
        slow_seq = int(results["slow"].as_numpy("OUTPUT1")[0, 0])
        fast_seq = int(results["fast"].as_numpy("OUTPUT1")[0, 0])
        if slow_seq < fast_seq:  # the slow request arrived first, as intended
            break
    else:
        pytest.skip("the machine never delivered the slow request first")
    # the fast one finished executing long before the slow one (on the other instance), but was
    # answered only once the slow one had run its 800 ms: never before that. (Comparing the two
    # clients' completion times would race on the client side: both answers leave together.)
    assert calls.done_at["fast"] - sent >= 0.79
