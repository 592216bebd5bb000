"""The sequence batcher, through the real server and tritonclient's sequence arguments.

Models are Triton's example sequence models plus accumulator variants (implicit state) written by
``examples/make_models.py``; expected outputs are computed here from the values sent.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import start_server
from tritonclient.utils import InferenceServerException

VALUES = [11, 7, 5, 3, 2, 0, 1]  # simple_http_sequence_sync_infer_client.py


def _direct(delay_us: int = 0, utilization: float = 0.0) -> str:
    if not delay_us:
        return ""
    return (
        f"direct {{ max_queue_delay_microseconds: {delay_us} "
        f"minimum_slot_utilization: {utilization} }}"
    )


def _oldest(candidates: int, delay_us: int, preferred: int = 0) -> str:
    sizes = f" preferred_batch_size: [ {preferred} ]" if preferred else ""
    return (
        f"oldest {{ max_candidate_sequences: {candidates}{sizes} "
        f"max_queue_delay_microseconds: {delay_us} }}"
    )


def _accumulator(models, repo, name, *, max_batch=8, corrid=None, **kwargs):
    """An implicit-state accumulator; with ``corrid`` ("TYPE_UINT64"/"TYPE_STRING") it also
    takes END and CORRID and adds the id to the END request's output."""
    from onnx import TensorProto

    onnx_type = {None: None, "TYPE_UINT64": TensorProto.UINT64, "TYPE_STRING": TensorProto.STRING}
    controls = ["START", "READY"] + (["END", "CORRID"] if corrid else [])
    config = models.sequence_config(
        name,
        controls,
        corrid_type=corrid or "TYPE_UINT64",
        implicit_state=True,
        instances=kwargs.pop("instances", 1),
        **kwargs,
    ).replace("max_batch_size: 8", f"max_batch_size: {max_batch}")
    batching = max_batch > 0
    models.write_model(
        repo, name, models.build_sequence_accumulator(onnx_type[corrid], batching), config
    )


def _controls_model(models, repo):
    """Echoes the control tensors it is fed: START fp32 [-1, 2.5], END bool, READY int32
    [7, 9], CORRID INT32 (uint64 ids keep their low 32 bits)."""
    from onnx import TensorProto, helper

    f32, i32, b = TensorProto.FLOAT, TensorProto.INT32, TensorProto.BOOL
    io = models._seq_io
    nodes = [
        helper.make_node("Identity", ["INPUT"], ["OUTPUT"]),
        helper.make_node("Identity", ["START"], ["O_START"]),
        helper.make_node("Cast", ["END"], ["O_END"], to=i32),
        helper.make_node("Identity", ["READY"], ["O_READY"]),
        helper.make_node("Identity", ["CORRID"], ["O_CORRID"]),
    ]
    graph = models._model(
        nodes,
        [io("INPUT", i32), io("START", f32), io("END", b), io("READY", i32), io("CORRID", i32)],
        [
            io("OUTPUT", i32),
            io("O_START", f32),
            io("O_END", i32),
            io("O_READY", i32),
            io("O_CORRID", i32),
        ],
        "controls",
    )
    config = """name: "controls"
platform: "onnxruntime_onnx"
max_batch_size: 4
sequence_batching {
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ -1, 2.5 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END bool_false_true: [ false, true ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 7, 9 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_INT32 } ] }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [
  { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "O_START" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "O_END" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "O_READY" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "O_CORRID" data_type: TYPE_INT32 dims: [ 1 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
    models.write_model(repo, "controls", graph, config)


def _counter_model(models, repo):
    """OUTPUT = state = state + INPUT; the state starts from initial_state/start.bin (1000)."""
    from onnx import TensorProto, helper

    i32 = TensorProto.INT32
    io = models._seq_io
    nodes = [
        helper.make_node("Add", ["INPUT_STATE", "INPUT"], ["OUTPUT_STATE"]),
        helper.make_node("Identity", ["OUTPUT_STATE"], ["OUTPUT"]),
    ]
    graph = models._model(
        nodes,
        [io("INPUT", i32), io("INPUT_STATE", i32)],
        [io("OUTPUT", i32), io("OUTPUT_STATE", i32)],
        "counter",
    )
    config = models.sequence_config("counter", [], implicit_state=True, instances=1)
    config = config.replace("control_input [\n\n  ]\n", "").replace(
        "zero_data: true", 'data_file: "start.bin"'
    )
    path = models.write_model(repo, "counter", graph, config)
    (path / "initial_state").mkdir()
    (path / "initial_state" / "start.bin").write_bytes(np.int32(1000).tobytes())


@pytest.fixture(scope="module")
def seq_server(tmp_path_factory, models):
    repo = tmp_path_factory.mktemp("sequence_repo")
    for write in (
        models.write_simple,
        models.write_mlp,
        models.write_simple_sequence,
        models.write_simple_dyna_sequence,
        models.write_simple_string_dyna_sequence,
        models.write_simple_sequence_implicit,
    ):
        write(repo)
    _accumulator(models, repo, "acc_direct", max_batch=2)
    _accumulator(
        models, repo, "acc_oldest", max_batch=4, corrid="TYPE_UINT64", strategy=_oldest(3, 1000)
    )
    _accumulator(models, repo, "lockstep_direct", max_batch=4, strategy=_direct(2_000_000, 1.0))
    _accumulator(
        models,
        repo,
        "lockstep_oldest",
        max_batch=4,
        corrid="TYPE_UINT64",
        strategy=_oldest(4, 2_000_000, preferred=4),
    )
    _accumulator(
        models,
        repo,
        "oldest_wait",
        max_batch=4,
        corrid="TYPE_UINT64",
        strategy=_oldest(4, 1_000_000, preferred=4),
    )
    _accumulator(models, repo, "filler", max_batch=4)
    _accumulator(models, repo, "idle", max_batch=1, idle_us=300_000)
    _accumulator(models, repo, "backlog", max_batch=1, idle_us=10_000_000)
    _accumulator(models, repo, "nobatch", max_batch=0, corrid="TYPE_STRING")
    _controls_model(models, repo)
    _counter_model(models, repo)
    srv = start_server(repo, log_dir=tmp_path_factory.mktemp("sequence_logs"))
    yield srv
    srv.stop()


@pytest.fixture
def client(seq_server):
    c = httpclient.InferenceServerClient(seq_server.url, network_timeout=60)
    yield c
    c.close()


def _input(value: int, batch: int = 1, batching: bool = True):
    shape = [batch, 1] if batching else [1]
    inp = httpclient.InferInput("INPUT", shape, "INT32")
    inp.set_data_from_numpy(np.full(shape, value, dtype=np.int32))
    return [inp]


def _step(client, model, sid, value, start=False, end=False, batching=True, **kw) -> int:
    result = client.infer(
        model,
        _input(value, batching=batching),
        sequence_id=sid,
        sequence_start=start,
        sequence_end=end,
        **kw,
    )
    return int(result.as_numpy("OUTPUT").reshape(-1)[0])


def _sequence(client, model, sid, values, **kw) -> list[int]:
    last = len(values) - 1
    return [
        _step(client, model, sid, v, start=i == 0, end=i == last, **kw)
        for i, v in enumerate(values)
    ]


def _sums(values, corrid=0) -> list[int]:
    """What the accumulators answer: running sums, plus the id on the END request."""
    out = list(np.cumsum(values))
    out[-1] += int(corrid)
    return [int(v) for v in out]


def _stats(client, model) -> dict:
    return client.get_inference_statistics(model)["model_stats"][0]


def _error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def _threads(fns) -> list:
    """Run each fn on its own thread; return their results (or exceptions) in order."""
    results: list = [None] * len(fns)

    def run(i, fn):
        try:
            results[i] = fn()
        except Exception as exc:  # reported by the caller's asserts
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


# ---- Triton's example client ---------------------------------------------------------------


def test_example_client_simple_sequence(client):
    """simple_http_sequence_sync_infer_client.py: uint64 ids and a UUID string id."""
    seq0 = _sequence(client, "simple_sequence", 1000, [0] + VALUES)
    seq1 = _sequence(client, "simple_sequence", 1001, [100] + [-v for v in VALUES])
    seq2 = _sequence(client, "simple_sequence", str(uuid.uuid4()), [20] + [-v for v in VALUES])
    assert seq0 == [1] + VALUES
    assert seq1 == [101] + [-v for v in VALUES]
    assert seq2 == [21] + [-v for v in VALUES]


def test_example_client_dyna_sequence(client):
    """The same client with ``-d``: simple_dyna_sequence and simple_string_dyna_sequence."""
    seq0 = _sequence(client, "simple_dyna_sequence", 1000, [0] + VALUES)
    seq1 = _sequence(client, "simple_dyna_sequence", 1001, [100] + [-v for v in VALUES])
    seq2 = _sequence(client, "simple_string_dyna_sequence", "1002", [20] + [-v for v in VALUES])
    assert seq0 == [1] + VALUES[:-1] + [1 + 1000]
    assert seq1 == [101] + [-v for v in VALUES[:-1]] + [-1 + 1001]
    expected, previous = [20], 20
    for v in VALUES:
        previous = previous - v
        expected.append(previous)
    expected[-1] += 1002
    assert seq2 == expected


# ---- implicit state --------------------------------------------------------------------------


def test_implicit_state_accumulates_per_sequence(client):
    """Two sequences (uint64 and string id) interleaved step by step keep separate sums; the
    state output never reaches the client."""
    a, b = [5, 1, 2, 3], [100, -10, -20, -30]
    got_a, got_b = [], []
    for i in range(4):
        kw = {"start": i == 0, "end": i == 3}
        got_a.append(_step(client, "simple_sequence_implicit", 41, a[i], **kw))
        got_b.append(_step(client, "simple_sequence_implicit", "forty-two", b[i], **kw))
    assert got_a == _sums(a)
    assert got_b == _sums(b)
    result = client.infer(
        "simple_sequence_implicit",
        _input(3),
        sequence_id=43,
        sequence_start=True,
        sequence_end=True,
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT"]


def test_initial_state_from_data_file(client):
    assert _sequence(client, "counter", 7, [1, 2, 3]) == [1001, 1003, 1006]
    # the id is free again after END; a new sequence starts from the initial state
    assert _sequence(client, "counter", 7, [5]) == [1005]


def test_model_without_batching(client):
    got = _sequence(client, "nobatch", "77", [4, 5, 6], batching=False)
    assert got == _sums([4, 5, 6], corrid=77)


# ---- slots, batching and order ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        ("acc_direct", "int"),
        ("acc_direct", "str"),
        ("acc_oldest", "int"),
        ("simple_string_dyna_sequence", "str"),
    ],
)
def test_many_sequences_over_few_slots(seq_server, model, kind):
    """Twelve sequences of different lengths share two or three slots (the rest wait in the
    backlog); every step's output is exact."""
    rng = random.Random(f"{model}-{kind}")
    plans = {}
    for i in range(12):
        sid = 5000 + i if kind == "int" else (f"{5000 + i}" if "dyna" in model else f"s-{i}")
        plans[sid] = [rng.randint(-50, 50) for _ in range(rng.randint(3, 9))]
    adds_id = model != "acc_direct"

    def run(sid, values):
        c = httpclient.InferenceServerClient(seq_server.url, network_timeout=60)
        try:
            return _sequence(c, model, sid, values)
        finally:
            c.close()

    before = _stats(httpclient.InferenceServerClient(seq_server.url), model)["inference_count"]
    results = _threads([lambda s=s, v=v: run(s, v) for s, v in plans.items()])
    for (sid, values), got in zip(plans.items(), results, strict=True):
        assert got == _sums(values, int(sid) if adds_id else 0), sid
    after = _stats(httpclient.InferenceServerClient(seq_server.url), model)["inference_count"]
    assert after - before == sum(len(v) for v in plans.values())


@pytest.mark.parametrize("model", ["lockstep_direct", "lockstep_oldest"])
def test_sequences_are_batched_together(seq_server, client, model):
    """Four sequences in lockstep on four slots: each execution carries one request of every
    sequence (the batcher waits for full batches, up to a 2 s delay)."""
    steps = 6
    plans = {9000 + i: [i * 10 + s for s in range(steps)] for i in range(4)}

    def run(sid, values):
        c = httpclient.InferenceServerClient(seq_server.url, network_timeout=60)
        try:
            return _sequence(c, model, sid, values)
        finally:
            c.close()

    results = _threads([lambda s=s, v=v: run(s, v) for s, v in plans.items()])
    adds_id = model.endswith("oldest")
    for (sid, values), got in zip(plans.items(), results, strict=True):
        assert got == _sums(values, sid if adds_id else 0)
    s = _stats(client, model)
    assert s["execution_count"] == steps
    assert [b["batch_size"] for b in s["batch_stats"]] == [4]


def test_oldest_runs_one_request_per_sequence_at_a_time(seq_server, client):
    """Requests of one sequence sent together still run one after another, in order."""
    values = [1, 2, 3]

    def send(i):
        c = httpclient.InferenceServerClient(seq_server.url, network_timeout=60)
        try:
            time.sleep(0.2 * i)  # arrival order = sequence order; all wait for the 1 s delay
            return _step(c, "oldest_wait", 321, values[i], start=i == 0, end=i == 2)
        finally:
            c.close()

    results = _threads([lambda i=i: send(i) for i in range(3)])
    assert results == _sums(values, 321)
    s = _stats(client, "oldest_wait")
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in s["batch_stats"]] == [(1, 3)]


def test_direct_keeps_batch_positions_with_fillers(client):
    """Sequence B in slot 1 runs in a batch of two whose slot 0 is a not-ready filler; the
    filler's READY=0 leaves nothing behind and its output is dropped."""
    a = [_step(client, "filler", "A", 1, start=True)]
    b = [_step(client, "filler", "B", 10, start=True)]  # batch [filler, B]
    a.append(_step(client, "filler", "A", 2, end=True))  # batch [A]
    b.append(_step(client, "filler", "B", 20))  # batch [filler, B]
    b.append(_step(client, "filler", "B", 30, end=True))  # batch [filler, B]
    assert a == [1, 3]
    assert b == [10, 30, 60]
    s = _stats(client, "filler")
    assert {x["batch_size"]: x["compute_infer"]["count"] for x in s["batch_stats"]} == {1: 2, 2: 3}
    assert s["inference_count"] == 5


def test_control_inputs(client):
    """fp32/bool/int32 false-true values, and an INT32 CORRID holding the id's low 32 bits."""
    sid = (1 << 32) + 7

    def controls(**flags):
        r = client.infer("controls", _input(1), sequence_id=sid, **flags)
        return [r.as_numpy(n).item() for n in ("O_START", "O_END", "O_READY", "O_CORRID")]

    assert controls(sequence_start=True) == [2.5, 0, 9, 7]
    assert controls() == [-1.0, 0, 9, 7]
    assert controls(sequence_end=True) == [-1.0, 1, 9, 7]
    assert controls(sequence_start=True, sequence_end=True) == [2.5, 1, 9, 7]


# ---- idle sequences and the backlog ----------------------------------------------------------


def test_idle_sequence_frees_its_slot(seq_server, client):
    """One slot; A goes quiet, B waits in the backlog; after 0.3 s idle A is released, B runs,
    and A's next request needs START again."""
    assert _step(client, "idle", 1, 5, start=True) == 5

    def run_b():
        c = httpclient.InferenceServerClient(seq_server.url, network_timeout=60)
        try:
            return _sequence(c, "idle", 2, [7, 8])
        finally:
            c.close()

    [b] = _threads([run_b])
    assert b == [7, 15]
    err = _error(lambda: _step(client, "idle", 1, 6))
    assert err.status() == "400"
    assert (
        "inference request for sequence 1 to model 'idle' must specify the START flag on the "
        "first request of the sequence" in err.message()
    )
    assert _sequence(client, "idle", 1, [6, 1]) == [6, 7]


def test_backlog_timeout(seq_server, client):
    """A sequence waiting for a slot longer than its request's timeout fails (503)."""
    assert _step(client, "backlog", 1, 1, start=True) == 1
    c = httpclient.InferenceServerClient(seq_server.url, network_timeout=60)
    err = _error(lambda: _step(c, "backlog", 2, 1, start=True, timeout=200_000))
    c.close()
    assert err.status() == "503"
    assert "timeout of the corresponding sequence has been expired" in err.message()
    assert _step(client, "backlog", 1, 1, end=True) == 2
    assert _sequence(client, "backlog", 2, [3, 4]) == [3, 7]


# ---- errors ----------------------------------------------------------------------------------


def test_request_errors(client):
    cases = [
        (
            lambda: client.infer("simple_sequence", _input(1)),
            "inference request to model 'simple_sequence' must specify a non-zero or non-empty "
            "correlation ID",
        ),
        (
            lambda: client.infer("simple_sequence", _input(1), sequence_id=77),
            "inference request for sequence 77 to model 'simple_sequence' must specify the START "
            "flag on the first request of the sequence",
        ),
        (
            lambda: client.infer(
                "simple_sequence", _input(1), sequence_id="nope", sequence_end=True
            ),
            "inference request for sequence nope to model 'simple_sequence' must specify the START",
        ),
        (
            lambda: client.infer(
                "simple_sequence", _input(1, batch=2), sequence_id=5, sequence_start=True
            ),
            "inference request to model 'simple_sequence' must specify batch-size 1 due to "
            "requirements of sequence batcher",
        ),
        (
            lambda: client.infer(
                "simple_dyna_sequence", _input(1), sequence_id="x", sequence_start=True
            ),
            "sequence batching control 'CORRID' data-type is 'BYTES', but model "
            "'simple_dyna_sequence' expects 'UINT64'",
        ),
        (
            lambda: client.infer(
                "simple_string_dyna_sequence", _input(1), sequence_id=5, sequence_start=True
            ),
            "sequence batching control 'CORRID' data-type is 'UINT64', but model "
            "'simple_string_dyna_sequence' expects 'BYTES'",
        ),
    ]
    for call, message in cases:
        err = _error(call)
        assert err.status() == "400", message
        assert message in err.message()


def test_restart_with_start_continues_in_place(client):
    """A second START for a live id restarts the sequence (Triton warns and carries on)."""
    assert _step(client, "simple_sequence_implicit", 99, 4, start=True) == 4
    assert _step(client, "simple_sequence_implicit", 99, 6, start=True) == 6
    assert _step(client, "simple_sequence_implicit", 99, 1, end=True) == 7


def test_sequence_survives_traffic_on_other_models(seq_server, models):
    """A long sequence keeps exact sums while other models (and other sequences) are busy."""
    stop = threading.Event()

    def hammer(kind, index):
        c = httpclient.InferenceServerClient(seq_server.url, network_timeout=60)
        n = 0
        try:
            while not stop.is_set():
                if kind == "simple":
                    a = np.arange(16, dtype=np.int32).reshape(1, 16)
                    ins = [httpclient.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in (0, 1)]
                    for i in ins:
                        i.set_data_from_numpy(a)
                    assert (c.infer("simple", ins).as_numpy("OUTPUT0") == a + a).all()
                elif kind == "mlp":
                    x = np.ones((2, 16), dtype=np.float32)
                    inp = httpclient.InferInput("input", [2, 16], "FP32")
                    inp.set_data_from_numpy(x)
                    out = c.infer("mlp", [inp]).as_numpy("output")
                    np.testing.assert_allclose(out, models.mlp_numpy(x), rtol=1e-5, atol=1e-5)
                else:
                    sid = f"noise-{index}-{n}"
                    assert _sequence(c, "simple_sequence_implicit", sid, [1, 2]) == [1, 3]
                n += 1
            return n
        finally:
            c.close()

    def long_sequence():
        c = httpclient.InferenceServerClient(seq_server.url, network_timeout=60)
        try:
            values = list(range(-20, 30))
            got = _sequence(c, "simple_sequence_implicit", 123456, values)
            return got == _sums(values)
        finally:
            stop.set()
            c.close()

    kinds = ("simple", "mlp", "seq", "simple", "seq")
    results = _threads(
        [long_sequence] + [lambda k=k, i=i: hammer(k, i) for i, k in enumerate(kinds)]
    )
    assert results[0] is True
    assert all(isinstance(n, int) and n > 0 for n in results[1:]), results


def test_bad_initial_state_fails_the_load(server_factory, models, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    models.write_simple(repo)
    _accumulator(models, repo, "bad_state")
    cfg = repo / "bad_state" / "config.pbtxt"
    cfg.write_text(
        cfg.read_text().replace("dims: [ 1 ]\n        zero_data", "dims: [ 2 ]\n        zero_data")
    )
    srv = server_factory(repo, "--exit-on-error=false")
    c = httpclient.InferenceServerClient(srv.url)
    index = {e["name"]: e for e in c.get_model_repository_index()}
    assert index["bad_state"]["state"] == "UNAVAILABLE"
    assert (
        "'initial_state' dim for input name 'INPUT_STATE' doesn't match 'state' dim"
        in (index["bad_state"]["reason"])
    )
    c.close()
