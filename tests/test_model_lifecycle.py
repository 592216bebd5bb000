"""What a failed load leaves behind: the instances that did load are released on their own
threads (their ``finalize`` runs), and the server keeps serving the other models."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import tritonclient.http as httpclient

HALF_LOADING_PY = textwrap.dedent(
    '''
    import json
    import threading
    from pathlib import Path

    import naiad


    class HalfLoading(naiad.CustomInstance):
        """Instance 0 loads; instance 1 fails to. Each records where it was set up / released."""

        def initialize(self):
            self.log = Path(self.parameters["log"])
            self._note("initialize")
            if self.instance.name.endswith("_1"):
                raise naiad.ModelLoadError("instance 1 refuses to load")

        def finalize(self):
            self._note("finalize")

        def _note(self, event):
            with self.log.open("a") as f:
                f.write(json.dumps([event, self.instance.name, threading.current_thread().name]))
                f.write("\\n")

        def execute(self, inputs, outputs):
            return {"OUTPUT": inputs["INPUT"]}
    '''
)


def test_partial_load_failure_finalizes_loaded_instances_on_their_threads(
    tmp_path, server_factory, models
):
    repo = tmp_path / "repo"
    log = tmp_path / "events.jsonl"
    half = repo / "half"
    (half / "1").mkdir(parents=True)
    (half / "1" / "model.py").write_text(HALF_LOADING_PY)
    (half / "config.pbtxt").write_text(
        textwrap.dedent(
            f"""
            backend: "python"
            max_batch_size: 0
            input [{{ name: "INPUT", data_type: TYPE_FP32, dims: [ 4 ] }}]
            output [{{ name: "OUTPUT", data_type: TYPE_FP32, dims: [ 4 ] }}]
            instance_group [{{ kind: KIND_CPU, count: 2 }}]
            parameters {{ key: "log" value {{ string_value: "{log}" }} }}
            """
        )
    )
    models.write_simple(repo)
    srv = server_factory(repo, "--exit-on-error=false", "--strict-readiness=false")
    client = httpclient.InferenceServerClient(srv.url)
    try:
        assert not client.is_model_ready("half")
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["half"]["state"] == "UNAVAILABLE"
        assert "instance 1 refuses to load" in index["half"]["reason"]
        events = [json.loads(line) for line in log.read_text().splitlines()]
        inits = {name: thread for event, name, thread in events if event == "initialize"}
        finals = {name: thread for event, name, thread in events if event == "finalize"}
        assert len(inits) == 2
        loaded = next(name for name in inits if not name.endswith("_1"))
        # only the instance that loaded is finalized, on the thread it was initialized on
        assert finals == {loaded: inits[loaded]}
        assert finals[loaded].startswith("naiad-")
        # the other model serves
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(a)
        result = client.infer("simple", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    finally:
        client.close()
